"""remove_object: find an object by name and paint it over with its background."""

from core.templates.masks import MASKERS, object_mask
from core.tools.base import Tool, ToolContext, ToolResult, image_param, run_job, save, text_param


class RemoveObject(Tool):
    name = "remove_object"
    description = "Remove an object named in words from an image, filling the hole with background."
    parameters = {"image": image_param("the image to change"),
                  "object": text_param("the object to remove, e.g. 'the car'")}
    required = ("image", "object")
    models = ("Inpainting",)
    any_of = MASKERS

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        # 1. mask the object, grown  2. inpaint the mask with "background", as the seed did
        img = ctx.images.open(ctx.session, args["image"])
        mask = await object_mask(ctx, img, args["object"], args["image"])
        out = await run_job(ctx, "Inpainting", {"prompt": "background"}, [img, mask.for_inpainting()],
                            label="Removing")
        row = save(ctx, out.images[0], parent=args["image"], operation="remove_object",
                   params={"object": args["object"], "mask_by": mask.by})
        return ToolResult(f"Made {row.image_id}: {args['image']} without {args['object']}.", [row.image_id])
