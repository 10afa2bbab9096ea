"""caption_image: describe what is in an image: Florence-2's detailed caption when it is loaded, else BLIP's."""

from core.tools.base import Tool, ToolContext, ToolResult, image_param, on_image
from core.tools.choose import first_loaded

FLORENCE, BLIP = ("Florence2",), ("ImageCaptioning",)
DETAILED = {"task": "detailed_caption"}  # Florence-2's paragraph: what the agent knows of an upload


class CaptionImage(Tool):
    name = "caption_image"
    description = "Describe what an image shows."
    parameters = {"image": image_param("the image to describe")}
    any_of = (FLORENCE, BLIP)
    read_only = True

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        (model,) = await first_loaded(ctx, *self.any_of)
        _, out = await on_image(ctx, model, DETAILED if model == "Florence2" else {}, "Looking at the image")
        caption = (out.text or "").strip()
        if not caption:
            return ToolResult(f"The captioning model found nothing to say about {args['image']}.")
        ctx.images.store.set_caption(ctx.session, args["image"], caption)
        return ToolResult(f"{args['image']} shows: {caption}")
