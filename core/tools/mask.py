"""find_object: a black-and-white mask of an object named in words (CLIPSeg)."""

from core.tools.base import IMAGE_TO_SEARCH, Tool, ToolContext, ToolResult, on_image, save, text_param


class FindObject(Tool):
    name = "find_object"
    description = "Make a mask (white = the object) of an object named in words, for inpainting it later."
    parameters = {"image": IMAGE_TO_SEARCH, "object": text_param("the object to find, e.g. 'the dog'")}
    models = ("Text2Mask",)

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        params = {"prompt": args["object"]}
        _, out = await on_image(ctx, "Text2Mask", params, "Finding the object")
        if not out.images[0].getbbox():
            return ToolResult(f"Could not find {args['object']} in {args['image']}.", ok=False)
        row = save(ctx, out.images[0], out, parent=args["image"], operation=self.name, params=params)
        how = f" ({out.text})" if out.text else ""
        return ToolResult(f"Made {row.image_id}, the mask of {args['object']} in {args['image']}{how}.",
                          [row.image_id])
