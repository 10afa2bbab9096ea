"""The step three flows share: a mask of an object named in words."""

from __future__ import annotations

from PIL import Image

from core.errors import BadArguments
from core.tools.base import ToolContext, run_job


async def object_mask(ctx: ToolContext, img: Image.Image, what: str, image_id: str) -> Image.Image:
    """White where ``what`` is in ``img``; raises BadArguments when it is not found."""
    out = await run_job(ctx, "Text2Mask", {"prompt": what}, [img], label=f"Finding {what}")
    mask = out.images[0].convert("L")
    if not mask.getbbox():
        raise BadArguments(f"I could not find {what} in {image_id}; try describing it differently.")
    return mask
