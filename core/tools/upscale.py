"""upscale_image: twice the width and height, sharper (the Upscale ×2 button): the 2x latent upscaler.

A button, not offered to the LLM. The only tool whose output may exceed the
working size: up to ``max_output_size``, so an image over half of that is
first scaled down to half of it.
"""

from PIL import Image

from core.errors import BadArguments
from core.images import fit_size
from core.tools.base import Tool, ToolContext, ToolResult, image_param, run_job, save


class UpscaleImage(Tool):
    name = "upscale_image"
    description = "Make an image twice as large and sharper."
    parameters = {"image": image_param("the image to upscale")}
    models = ("Upscale",)

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        img = ctx.images.open(ctx.session, args["image"])
        largest = ctx.limits.max_output_size
        if not can_upscale(img.width, img.height, largest):
            raise BadArguments(f"{args['image']} is already {img.width}x{img.height}; {largest} px on a side is "
                               "the largest image this bot makes.")
        size = fit_size(img.width, img.height, largest // 2)
        if size != img.size:
            img = img.resize(size, Image.Resampling.LANCZOS)
        out = await run_job(ctx, "Upscale", {}, [img.convert("RGB")], label="Upscaling")
        row = save(ctx, out.images[0], out, parent=args["image"], operation=self.name, params={})
        return ToolResult(f"Made {row.image_id} ({row.width}x{row.height}), {args['image']} upscaled.",
                          [row.image_id])


def can_upscale(width: int, height: int, largest: int) -> bool:
    """Whether the result would be larger than the image, within ``largest`` px on a side."""
    return max(width, height) < largest
