"""Generate a new image that follows a condition map and a description (ControlNet).

One tool per condition kind, all on the same shared Stable Diffusion base in the pool.
"""

from core.tools.base import Tool, ToolContext, ToolResult, image_param, keep, on_image, text_param

# tool name -> (pool model, the condition it follows, the tool that makes that condition)
CONTROLS = {
    "generate_from_edges": ("CannyText2Image", "edge map", "detect_edges"),
    "generate_from_lines": ("LineText2Image", "line map", "detect_lines"),
    "generate_from_soft_edges": ("HedText2Image", "soft-edge map", "detect_soft_edges"),
    "generate_from_sketch": ("ScribbleText2Image", "sketch or scribble", "make_sketch"),
    "generate_from_pose": ("PoseText2Image", "pose map", "detect_pose"),
    "generate_from_segmentation": ("SegText2Image", "segmentation map", "segment_image"),
    "generate_from_depth": ("DepthText2Image", "depth map", "estimate_depth"),
    "generate_from_normals": ("NormalText2Image", "normal map", "estimate_normals"),
}


class GenerateFromCondition(Tool):
    def __init__(self, name: str):
        self.name = name
        self.model, what, maker = CONTROLS[name]
        self.models = (self.model,)
        self.description = (f"Draw a new image that follows a {what} (as made by {maker}) and a description, "
                            "e.g. the same pose or layout with a new subject.")
        self.parameters = {"image": image_param(f"the {what} to follow"),
                           "prompt": text_param("what the new image shows, in English")}

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        params = {"prompt": args["prompt"]}
        _, out = await on_image(ctx, self.model, params, "Drawing")
        return keep(ctx, out.images[0], out, self.name, params,
                    lambda made: f"Drew {made} following {args['image']}: {args['prompt']}.")


TOOLS = [GenerateFromCondition(name) for name in CONTROLS]
