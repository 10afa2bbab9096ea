"""segment_everything: every object and region SAM tells apart, each in its own colour (Segment Anything)."""

from core.tools.base import Tool, ToolContext, ToolResult, image_param, run_job, save
from core.tools.overlay import paint_regions


class SegmentEverything(Tool):
    name = "segment_everything"
    description = "Outline every separate object and region in an image, each in its own colour (Segment Anything)."
    parameters = {"image": image_param("the image to segment")}
    required = ("image",)
    models = ("Segmenting",)

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        img = ctx.images.open(ctx.session, args["image"])
        out = await run_job(ctx, "Segmenting", {}, [img], label="Segmenting everything")
        regions = out.data.get("regions", 0)
        if not regions:
            return ToolResult(f"Segment Anything found no distinct regions in {args['image']}.", ok=False)
        row = save(ctx, paint_regions(img, out.images[0]), parent=args["image"], operation=self.name,
                   params={"regions": regions})
        return ToolResult(f"Made {row.image_id}: {args['image']} with its {regions} region(s) in colour.",
                          [row.image_id])
