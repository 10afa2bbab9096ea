"""Finding an object named in words: Florence-2's phrase grounding boxes it and SAM 2 outlines what is
in the boxes when they are loaded (the modern profile); else, as the seed's final version did,
GroundingDINO (Text2Box) boxes it and Segment Anything (Segmenting) outlines each box.

Shared by detect_objects, segment_object and the object flows in core/templates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from core.errors import BadArguments
from core.tools.base import JobOutput, ToolContext, run_job
from core.tools.choose import first_loaded, loaded_models

__all__ = ["BOXERS", "Boxes", "MODERN", "PRECISE", "find_boxes", "loaded_models", "not_found", "outline"]

MODERN = ("Florence2", "Sam2")  # the modern profile's boxes and masks
PRECISE = ("Text2Box", "Segmenting")  # the seed's models behind precise object masks
BOXERS = (("Florence2",), ("Text2Box",))  # a box from words, either way


@dataclass
class Boxes:
    """Boxes in pixels (x0, y0, x1, y1), each with its words; GroundingDINO's with their scores, the surest
    first (Florence-2 gives none)."""

    boxes: list[list[float]]
    scores: list[float]
    labels: list[str]
    job: JobOutput | None = field(default=None, repr=False)  # the job that found them

    def describe(self) -> str:
        scores = self.scores or [None] * len(self.boxes)
        return "; ".join(f"{label}{f' ({score:.0%})' if score is not None else ''} at x {b[0]:.0f}-{b[2]:.0f}, "
                         f"y {b[1]:.0f}-{b[3]:.0f}" for b, score, label in zip(self.boxes, scores, self.labels))


def not_found(what: str, image_id: str) -> BadArguments:
    return BadArguments(f"I could not find {what} in {image_id}; try describing it differently.")


async def find_boxes(ctx: ToolContext, img: Image.Image, what: str, image_id: str) -> Boxes:
    """Boxes around ``what`` (Florence-2's grounding when it is loaded, else GroundingDINO's above its
    thresholds); BadArguments when there are none."""
    (model,) = await first_loaded(ctx, *BOXERS)
    params = {"task": "grounding", "text": what} if model == "Florence2" else {"prompt": what}
    out = await run_job(ctx, model, params, [img], label=f"Looking for {what}")
    boxes = out.data.get("boxes", [])
    found = Boxes(boxes, out.data.get("scores", []), out.data.get("labels", []) or [what] * len(boxes), out)
    if not found.boxes:
        raise not_found(what, image_id)
    return found


async def outline(ctx: ToolContext, img: Image.Image, boxes: Boxes, what: str) -> tuple[list[Image.Image], JobOutput]:
    """The masks of what is in the boxes: "L", the image's size, 0-255 (128 and up: the object); SAM 2's
    one mask of them all when it is loaded, else SAM's one per box; and the job."""
    model = "Sam2" if "Sam2" in await loaded_models(ctx) else "Segmenting"
    out = await run_job(ctx, model, {"boxes": boxes.boxes}, [img], label=f"Outlining {what}")
    return [m.convert("L") for m in out.images], out
