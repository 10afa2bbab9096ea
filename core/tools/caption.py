"""caption_image: describe what is in an image (BLIP captioning)."""

from core.tools.base import Tool, ToolContext, ToolResult, image_param, on_image


class CaptionImage(Tool):
    name = "caption_image"
    description = "Describe in one sentence what an image shows."
    parameters = {"image": image_param("the image to describe")}
    models = ("ImageCaptioning",)
    read_only = True

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        _, out = await on_image(ctx, "ImageCaptioning", {}, "Looking at the image")
        caption = (out.text or "").strip()
        if not caption:
            return ToolResult(f"The captioning model found nothing to say about {args['image']}.")
        ctx.images.store.set_caption(ctx.session, args["image"], caption)
        return ToolResult(f"{args['image']} shows: {caption}")
