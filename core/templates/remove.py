"""remove_object: find an object by name and paint it over with its background."""

from core.templates.masks import REPAINTERS, repaint_object
from core.tools.base import IMAGE_TO_CHANGE, Tool, ToolContext, ToolResult, keep, text_param


class RemoveObject(Tool):
    name = "remove_object"
    description = "Remove an object named in words from an image, filling the hole with background."
    parameters = {"image": IMAGE_TO_CHANGE, "object": text_param("the object to remove, e.g. 'the car'")}
    any_of = REPAINTERS

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        # 1. mask the object, grown  2. inpaint the mask with "background", as the seed did
        out, mask = await repaint_object(ctx, "background", "Removing")
        return keep(ctx, out.images[0], out, self.name, {"object": args["object"], "mask_by": mask.by},
                    lambda made: f"Made {made}: {args['image']} without {args['object']}.")
