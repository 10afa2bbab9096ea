"""edit_image: change an image by an instruction ("make it winter") with InstructPix2Pix."""

from core.tools.base import Tool, ToolContext, ToolResult, image_param, run_job, save, text_param


class EditImage(Tool):
    name = "edit_image"
    description = "Change an image by an instruction, e.g. 'make it look like winter'."
    parameters = {"image": image_param("the image to change"),
                  "instruction": text_param("the change, in English")}
    required = ("image", "instruction")
    models = ("InstructPix2Pix",)

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        img = ctx.images.open(ctx.session, args["image"])
        params = {"prompt": args["instruction"]}
        out = await run_job(ctx, "InstructPix2Pix", params, [img], label="Editing")
        row = save(ctx, out.images[0], parent=args["image"], operation="edit_image", params=params)
        return ToolResult(f"Made {row.image_id} from {args['image']}: {args['instruction']}.", [row.image_id])
