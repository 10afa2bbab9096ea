"""segment_everything: every object and region SAM tells apart, each in its own colour (Segment Anything)."""

from core.tools.base import Tool, ToolContext, ToolResult, image_param, keep, on_image
from core.tools.overlay import paint_regions


class SegmentEverything(Tool):
    name = "segment_everything"
    description = "Outline every separate object and region in an image, each in its own colour (Segment Anything)."
    parameters = {"image": image_param("the image to segment")}
    models = ("Segmenting",)

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        img, out = await on_image(ctx, "Segmenting", {}, "Segmenting everything")
        regions = out.data.get("regions", 0)
        if not regions:
            return ToolResult(f"Segment Anything found no distinct regions in {args['image']}.", ok=False)
        return keep(ctx, paint_regions(img, out.images[0]), out, self.name, {"regions": regions},
                    lambda made: f"Made {made}: {args['image']} with its {regions} region(s) in colour.")
