"""detect_objects: labelled boxes around objects named in words (Florence-2's grounding, or GroundingDINO),
and the boxes in words."""

from core.tools.base import IMAGE_TO_SEARCH, Tool, ToolContext, ToolResult, keep, text_param
from core.tools.objects import BOXERS, find_boxes
from core.tools.overlay import draw_boxes


class DetectObjects(Tool):
    name = "detect_objects"
    description = "Find the objects named in words in an image and draw a labelled box around each one."
    parameters = {"image": IMAGE_TO_SEARCH,
                  "object": text_param("what to find, e.g. 'the dog' or 'cars. people'")}
    any_of = BOXERS

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        img = ctx.images.open(ctx.session, args["image"])
        found = await find_boxes(ctx, img, args["object"], args["image"])
        params = {"object": args["object"], "boxes": found.boxes, "scores": found.scores, "labels": found.labels}
        return keep(ctx, draw_boxes(img, found.boxes, found.labels), found.job, self.name, params,
                    lambda made: f"Made {made}: {args['image']} with {len(found.boxes)} box(es) for {args['object']}: "
                                 f"{found.describe()}.")
