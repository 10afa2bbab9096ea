"""replace_object: find an object by name and paint something else in its place."""

from core.templates.masks import MASKERS, object_mask
from core.tools.base import Tool, ToolContext, ToolResult, image_param, run_job, save, text_param


class ReplaceObject(Tool):
    name = "replace_object"
    description = "Replace an object named in words with something else, e.g. the cat with a dog."
    parameters = {"image": image_param("the image to change"),
                  "object": text_param("the object to replace, e.g. 'the cat'"),
                  "replacement": text_param("what to put there instead, e.g. 'a corgi'")}
    required = ("image", "object", "replacement")
    models = ("Inpainting",)
    any_of = MASKERS

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        # 1. mask the object, grown  2. inpaint the mask with the new description
        img = ctx.images.open(ctx.session, args["image"])
        mask = await object_mask(ctx, img, args["object"], args["image"])
        out = await run_job(ctx, "Inpainting", {"prompt": args["replacement"]}, [img, mask.for_inpainting()],
                            label="Replacing")
        row = save(ctx, out.images[0], parent=args["image"], operation="replace_object",
                   params={"object": args["object"], "replacement": args["replacement"], "mask_by": mask.by})
        return ToolResult(f"Made {row.image_id}: {args['image']} with {args['object']} replaced by "
                          f"{args['replacement']}.", [row.image_id])
