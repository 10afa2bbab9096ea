"""The steps three flows share: a mask of an object named in words, and repainting it.

Florence-2 boxes + SAM 2 masks when both are loaded (the modern profile), else
GroundingDINO boxes + SAM masks when both are (the seed's final version), else
CLIPSeg (Text2Mask); ``ObjectMask.by`` says which, and the flows keep it in the
image's provenance (``mask_by``). The mask is repainted by FLUX.2 [klein]'s
inpainting (KleinInpaint) when it is loaded, else by SD1.5's (Inpainting). Both give a mask
that is not grown and has smooth edges. Inpainting grows it by the seed's
20 px, so the object's edge is repainted too; a cut-out uses it as it is,
so no rim of background comes with the object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from core.tools import klein
from core.tools.base import JobOutput, ToolContext, run_job
from core.tools.klein import KLEIN_INPAINT
from core.tools.choose import combined, first_loaded
from core.tools.objects import MODERN, PRECISE, find_boxes, not_found, outline

SAM2, SAM, CLIPSEG = "Florence2+SAM2", "GroundingDINO+SAM", "CLIPSeg"
MASKERS = (MODERN, PRECISE, ("Text2Mask",))  # the ways to a mask, the preferred first: any will do
PAINTERS = ((KLEIN_INPAINT,), ("Inpainting",))
NEAREST = Image.Resampling.NEAREST  # the ways to repaint a mask
REPAINTERS = combined(MASKERS, PAINTERS)  # the object flows' Tool.any_of: a mask and a painter
# The seed grew masks by 20 px: on CLIPSeg's 352 px map, and on the ~512 px image SAM segmented.
PADDING = {CLIPSEG: 20 / 352, SAM: 20 / 512, SAM2: 20 / 512}


@dataclass
class ObjectMask:
    soft: Image.Image  # "L" at the image's size: 255 the object, 0 not, smooth in between; not grown
    by: str  # SAM or CLIPSEG
    job: JobOutput  # the job that made it

    def for_inpainting(self) -> Image.Image:
        """0/255, grown by the seed's padding (a fraction of the long side)."""
        radius = round(PADDING[self.by] * max(self.soft.size))
        return Image.fromarray(grow(np.asarray(self.soft) >= 128, radius).astype(np.uint8) * 255, "L")

    def for_cutout(self) -> Image.Image:
        """The alpha channel of a cut-out: the mask as it is."""
        return self.soft


async def object_mask(ctx: ToolContext, img: Image.Image, what: str, image_id: str) -> ObjectMask:
    """``what`` in ``img``; raises BadArguments (I could not find ...) when it is not there."""
    way = await first_loaded(ctx, *MASKERS)
    if way != ("Text2Mask",):
        masks, job = await outline(ctx, img, await find_boxes(ctx, img, what, image_id), what)
        union = np.maximum.reduce([np.asarray(m) for m in masks])
        mask = ObjectMask(Image.fromarray(union, "L"), SAM2 if way == MODERN else SAM, job)
    else:  # Text2Mask's answer under the seed's 2 % minimum is all black: "not found" too
        out = await run_job(ctx, "Text2Mask", {"prompt": what, "soft": True}, [img], label=f"Finding {what}")
        mask = ObjectMask(out.images[0].convert("L"), CLIPSEG, out)
    if not (np.asarray(mask.soft) >= 128).any():
        raise not_found(what, image_id)
    return mask


async def repaint_object(ctx: ToolContext, prompt: str, label: str) -> tuple[JobOutput, ObjectMask]:
    """The call's ``object`` in its ``image``, masked (grown) and inpainted with ``prompt``; and the mask."""
    img = ctx.images.open(ctx.session, ctx.args["image"])
    mask = await object_mask(ctx, img, ctx.args["object"], ctx.args["image"])
    (painter,) = await first_loaded(ctx, *PAINTERS)
    grown = mask.for_inpainting()
    if painter == KLEIN_INPAINT:  # at least 64 px a side, scaled back after
        out = await run_job(ctx, painter, {"prompt": prompt}, [klein.ready(img), klein.ready(grown, NEAREST)],
                            label=label)
        out.images[0] = klein.back(out.images[0], img)
    else:
        out = await run_job(ctx, painter, {"prompt": prompt}, [img, grown], label=label)
    return out, mask


def grow(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` (bool) grown by ``radius`` pixels in a square, as the seed's pad_edge;
    a summed-area table makes it one pass whatever the radius."""
    if radius <= 0:
        return mask
    h, w = mask.shape
    table = np.pad(mask.astype(np.int32), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    y0, y1 = np.clip(np.arange(h) - radius, 0, h), np.clip(np.arange(h) + radius + 1, 0, h)
    x0, x1 = np.clip(np.arange(w) - radius, 0, w), np.clip(np.arange(w) + radius + 1, 0, w)
    inside = table[y1][:, x1] - table[y0][:, x1] - table[y1][:, x0] + table[y0][:, x0]
    return inside > 0
