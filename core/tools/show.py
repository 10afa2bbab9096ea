"""show_image: post an existing image again, when the user asks to see it."""

from core.tools.base import Tool, ToolContext, ToolResult, image_param


class ShowImage(Tool):
    name = "show_image"
    description = "Attach an existing image to your answer, only when the user asks to see it."
    parameters = {"image": image_param("the image the user wants to see")}
    models = ()  # no model: the image is already in the conversation
    read_only = True

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        if args["image"] not in ctx.shown:
            ctx.shown.append(args["image"])
        return ToolResult(f"{args['image']} will be attached to your answer.")
