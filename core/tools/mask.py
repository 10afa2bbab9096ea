"""find_object: a black-and-white mask of an object named in words (CLIPSeg)."""

from core.tools.base import Tool, ToolContext, ToolResult, image_param, run_job, save, text_param


class FindObject(Tool):
    name = "find_object"
    description = "Make a mask (white = the object) of an object named in words, for inpainting it later."
    parameters = {"image": image_param("the image to search"),
                  "object": text_param("the object to find, e.g. 'the dog'")}
    required = ("image", "object")
    models = ("Text2Mask",)

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        img = ctx.images.open(ctx.session, args["image"])
        params = {"prompt": args["object"]}
        out = await run_job(ctx, "Text2Mask", params, [img], label="Finding the object")
        mask = out.images[0]
        if not mask.getbbox():
            return ToolResult(f"Could not find {args['object']} in {args['image']}.", ok=False)
        row = save(ctx, mask, parent=args["image"], operation="find_object", params=params)
        return ToolResult(f"Made {row.image_id}, the mask of {args['object']} in {args['image']}"
                          + (f" ({out.text})." if out.text else "."), [row.image_id])
