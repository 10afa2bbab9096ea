"""detect_objects: labelled boxes around objects named in words (GroundingDINO), and the boxes in words."""

from core.tools.base import Tool, ToolContext, ToolResult, image_param, save, text_param
from core.tools.objects import find_boxes
from core.tools.overlay import draw_boxes


class DetectObjects(Tool):
    name = "detect_objects"
    description = "Find the objects named in words in an image and draw a labelled box around each one."
    parameters = {"image": image_param("the image to search"),
                  "object": text_param("what to find, e.g. 'the dog' or 'cars. people'")}
    required = ("image", "object")
    models = ("Text2Box",)

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        img = ctx.images.open(ctx.session, args["image"])
        found = await find_boxes(ctx, img, args["object"], args["image"])
        row = save(ctx, draw_boxes(img, found.boxes, found.labels), parent=args["image"], operation=self.name,
                   params={"object": args["object"], "boxes": found.boxes, "scores": found.scores,
                           "labels": found.labels})
        return ToolResult(f"Made {row.image_id}: {args['image']} with {len(found.boxes)} box(es) for "
                          f"{args['object']}: {found.describe()}.", [row.image_id])
