"""Condition maps of an image (edges, lines, pose, depth ...): one tool per annotator.

They differ only in model and wording, so they are one table and one class. A map a modern model also
makes (depth: Depth Anything V2) is made by it when it is loaded (``MODERN``).
"""

from core.tools.base import Tool, ToolContext, ToolResult, image_param, keep, on_image
from core.tools.choose import first_loaded

# tool name -> (pool model, what it makes, when to use it)
CONDITIONS = {
    "detect_edges": ("Image2Canny", "edge map", "Find the edges in an image (Canny edge map)."),
    "detect_lines": ("Image2Line", "line map",
                     "Find the straight lines in an image (M-LSD), e.g. of buildings or rooms."),
    "detect_soft_edges": ("Image2Hed", "soft-edge map", "Find the soft boundaries of an image (HED boundary map)."),
    "make_sketch": ("Image2Scribble", "sketch", "Turn an image into a rough scribble sketch."),
    "detect_pose": ("Image2Pose", "pose map", "Find the pose of the people in an image (OpenPose skeleton)."),
    "segment_image": ("Image2Seg", "segmentation map",
                      "Split an image into coloured regions by what they are "
                      "(one colour per kind: sky, road, person ...)."),
    "estimate_depth": ("Image2Depth", "depth map", "Estimate how far away each part of an image is (depth map)."),
    "estimate_normals": ("Image2Normal", "normal map", "Estimate the surface directions in an image (normal map)."),
}
MODERN = {"estimate_depth": "DepthAnything"}  # tool name -> the modern model preferred for it


class DetectCondition(Tool):
    parameters = {"image": image_param("the image to analyse")}

    def __init__(self, name: str):
        self.name = name
        self.model, self.made_what, self.description = CONDITIONS[name]
        self.any_of = ((MODERN[name],), (self.model,)) if name in MODERN else ((self.model,),)

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        (model,) = await first_loaded(ctx, *self.any_of) if len(self.any_of) > 1 else self.any_of[0]
        _, out = await on_image(ctx, model, {}, f"Making a {self.made_what}")
        return keep(ctx, out.images[0], out, self.name, {},
                    lambda made: f"Made {made}, the {self.made_what} of {args['image']}.")


TOOLS = [DetectCondition(name) for name in CONDITIONS]
