"""edit_image: change an image by an instruction ("make it winter") with InstructPix2Pix."""

from core.tools.base import IMAGE_TO_CHANGE, Tool, ToolContext, ToolResult, keep, on_image, text_param


class EditImage(Tool):
    name = "edit_image"
    description = "Change an image by an instruction, e.g. 'make it look like winter'."
    parameters = {"image": IMAGE_TO_CHANGE, "instruction": text_param("the change, in English")}
    models = ("InstructPix2Pix",)

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        params = {"prompt": args["instruction"]}
        _, out = await on_image(ctx, "InstructPix2Pix", params, "Editing")
        return keep(ctx, out.images[0], out, self.name, params,
                    lambda made: f"Made {made} from {args['image']}: {args['instruction']}.")
