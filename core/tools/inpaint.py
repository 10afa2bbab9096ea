"""inpaint_image: repaint the masked part of an image from a description (SD inpainting)."""

from PIL import Image

from core.errors import BadArguments
from core.tools.base import Tool, ToolContext, ToolResult, image_param, run_job, save, text_param


class InpaintImage(Tool):
    name = "inpaint_image"
    description = "Repaint the white part of a mask (as made by find_object) in an image with what a description says."
    parameters = {"image": image_param("the image to change"),
                  "mask": image_param("the mask: white where to repaint"),
                  "prompt": text_param("what to paint there, in English")}
    required = ("image", "mask", "prompt")
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
        row = save(ctx, out.images[0], parent=args["image"], operation="inpaint_image",
                   params=dict(params, mask=args["mask"]))
        return ToolResult(f"Made {row.image_id}: {args['image']} with the masked part repainted as "
                          f"{args['prompt']}.", [row.image_id])
