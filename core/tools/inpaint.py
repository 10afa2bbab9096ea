"""inpaint_image: repaint the masked part of an image from a description (SD inpainting)."""

from PIL import Image

from core.errors import BadArguments
from core.tools.base import IMAGE_TO_CHANGE, Tool, ToolContext, ToolResult, image_param, keep, run_job, text_param


class InpaintImage(Tool):
    name = "inpaint_image"
    description = "Repaint the white part of a mask (as made by find_object) in an image with what a description says."
    parameters = {"image": IMAGE_TO_CHANGE,
                  "mask": image_param("the mask: white where to repaint"),
                  "prompt": text_param("what to paint there, in English")}
    models = ("Inpainting",)

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        img = ctx.images.open(ctx.session, args["image"])
        mask = ctx.images.open(ctx.session, args["mask"]).convert("L")
        if mask.size != img.size:
            mask = mask.resize(img.size, Image.Resampling.NEAREST)
        if not mask.getbbox():
            raise BadArguments(f"{args['mask']} is all black: nothing to repaint.")
        params = {"prompt": args["prompt"]}
        out = await run_job(ctx, "Inpainting", params, [img, mask], label="Painting")
        return keep(ctx, out.images[0], out, self.name, dict(params, mask=args["mask"]),
                    lambda made: f"Made {made}: {args['image']} with the masked part repainted as {args['prompt']}.")
