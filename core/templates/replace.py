"""replace_object: find an object by name and paint something else in its place."""

from core.templates.masks import REPAINTERS, repaint_object
from core.tools.base import IMAGE_TO_CHANGE, Tool, ToolContext, ToolResult, keep, text_param


class ReplaceObject(Tool):
    name = "replace_object"
    description = "Replace an object named in words with something else, e.g. the cat with a dog."
    parameters = {"image": IMAGE_TO_CHANGE, "object": text_param("the object to replace, e.g. 'the cat'"),
                  "replacement": text_param("what to put there instead, e.g. 'a corgi'")}
    any_of = REPAINTERS

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        # 1. mask the object, grown  2. inpaint the mask with the new description
        out, mask = await repaint_object(ctx, args["replacement"], "Replacing")
        params = {"object": args["object"], "replacement": args["replacement"], "mask_by": mask.by}
        return keep(ctx, out.images[0], out, self.name, params, lambda made: (
            f"Made {made}: {args['image']} with {args['object']} replaced by {args['replacement']}."))
