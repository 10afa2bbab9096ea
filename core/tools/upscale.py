"""upscale_image: twice the width and height, sharper (the Upscale ×2 button): FLUX.2 [klein] redraws the
image at twice its size (an edit of the image resized 2x, sides in multiples of 16) when it is loaded, the
modern profile's way (Apache-2.0; the seed's upscaler is OpenRAIL++, not a permissive licence); else
Stability AI's 2x latent upscaler (Upscale).

A button, not offered to the LLM. The only tool whose output may exceed the
working size: up to ``max_output_size``, so an image over half of that is
first scaled down to half of it.
"""

from PIL import Image

from core.errors import BadArguments
from core.images import fit_size
from core.tools.base import Tool, ToolContext, ToolResult, image_param, run_job, save
from core.tools.choose import first_loaded

KLEIN_UPSCALE = "The same image at twice the resolution: keep everything as it is, sharper, with finer detail."


class UpscaleImage(Tool):
    name = "upscale_image"
    description = "Make an image twice as large and sharper."
    parameters = {"image": image_param("the image to upscale")}
    any_of = (("Klein",), ("Upscale",))

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        img = ctx.images.open(ctx.session, args["image"])
        largest = ctx.limits.max_output_size
        if not can_upscale(img.width, img.height, largest):
            raise BadArguments(f"{args['image']} is already {img.width}x{img.height}; {largest} px on a side is "
                               "the largest image this bot makes.")
        size = fit_size(img.width, img.height, largest // 2)
        if size != img.size:
            img = img.resize(size, Image.Resampling.LANCZOS)
        if await first_loaded(ctx, *self.any_of) == ("Klein",):
            out = await _klein(ctx, img.convert("RGB"))
        else:
            out = await run_job(ctx, "Upscale", {}, [img.convert("RGB")], label="Upscaling")
        row = save(ctx, out.images[0], out, parent=args["image"], operation=self.name, params={})
        return ToolResult(f"Made {row.image_id} ({row.width}x{row.height}), {args['image']} upscaled.",
                          [row.image_id])


def can_upscale(width: int, height: int, largest: int) -> bool:
    """Whether the result would be larger than the image, within ``largest`` px on a side."""
    return max(width, height) < largest


async def _klein(ctx: ToolContext, img: Image.Image):
    """klein's edit of ``img`` resized to twice its size, drawn at that size rounded to multiples of 16."""
    size = (img.width * 2, img.height * 2)
    drawn = (max(64, size[0] // 16 * 16), max(64, size[1] // 16 * 16))
    params = {"prompt": KLEIN_UPSCALE, "width": drawn[0], "height": drawn[1]}
    out = await run_job(ctx, "Klein", params, [img.resize(size, Image.Resampling.LANCZOS)], label="Upscaling")
    if out.images[0].size != size:
        out.images[0] = out.images[0].resize(size, Image.Resampling.LANCZOS)
    return out
