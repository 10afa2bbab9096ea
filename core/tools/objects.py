"""Finding an object named in words, as the seed's final version did: GroundingDINO
(Text2Box) boxes it, Segment Anything (Segmenting) outlines what is in each box.

Shared by detect_objects, segment_object and the object flows in core/templates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from core.errors import BadArguments, PoolFailed
from core.pool_client import PoolUnavailable
from core.tools.base import JobOutput, ToolContext, run_job

PRECISE = ("Text2Box", "Segmenting")  # the models behind precise object masks


@dataclass
class Boxes:
    """Text2Box's answer: boxes in pixels (x0, y0, x1, y1), the surest first, each with its score and words."""

    boxes: list[list[float]]
    scores: list[float]
    labels: list[str]
    job: JobOutput | None = field(default=None, repr=False)  # the job that found them

    def describe(self) -> str:
        return "; ".join(f"{label} ({score:.0%}) at x {b[0]:.0f}-{b[2]:.0f}, y {b[1]:.0f}-{b[3]:.0f}"
                         for b, score, label in zip(self.boxes, self.scores, self.labels))


def not_found(what: str, image_id: str) -> BadArguments:
    return BadArguments(f"I could not find {what} in {image_id}; try describing it differently.")


async def loaded_models(ctx: ToolContext) -> set[str]:
    """Models ready in the pool, or loading (a job waits for them)."""
    try:
        return {m.name for m in await ctx.pool.models() if m.state in ("ready", "loading")}
    except PoolUnavailable as e:
        raise PoolFailed(str(e), "unavailable") from None


async def find_boxes(ctx: ToolContext, img: Image.Image, what: str, image_id: str) -> Boxes:
    """Boxes around ``what`` scoring above the detector's thresholds; BadArguments when there are none."""
    out = await run_job(ctx, "Text2Box", {"prompt": what}, [img], label=f"Looking for {what}")
    found = Boxes(out.data.get("boxes", []), out.data.get("scores", []), out.data.get("labels", []), out)
    if not found.boxes:
        raise not_found(what, image_id)
    return found


async def outline(ctx: ToolContext, img: Image.Image, boxes: Boxes, what: str) -> tuple[list[Image.Image], JobOutput]:
    """SAM's mask of what is in each box: "L", the image's size, 0-255 (128 and up: the object); and its job."""
    out = await run_job(ctx, "Segmenting", {"boxes": boxes.boxes}, [img], label=f"Outlining {what}")
    return [m.convert("L") for m in out.images], out
