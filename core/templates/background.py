"""remove_background: ask what the main object is, mask it, keep it on a transparent background.

Florence-2 (the modern profile) names the subject with its short caption, which its grounding then finds;
BLIP VQA is asked "what is the main object?" otherwise.
"""

from core.templates.masks import MASKERS, object_mask
from core.tools.base import Tool, ToolContext, ToolResult, image_param, keep, run_job
from core.tools.choose import combined, first_loaded

ASKERS = (("Florence2",), ("VisualQuestionAnswering",))


class RemoveBackground(Tool):
    name = "remove_background"
    description = "Cut out the main subject of an image onto a transparent background."
    parameters = {"image": image_param("the image to cut out")}
    any_of = combined(ASKERS, MASKERS)

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        img = ctx.images.open(ctx.session, args["image"])
        # 1. ask what the subject is  2. mask it (not grown)  3. use the mask as the alpha channel
        if await first_loaded(ctx, *ASKERS) == ("Florence2",):
            answer = await run_job(ctx, "Florence2", {"task": "caption"}, [img], label="Looking at the image")
        else:
            answer = await run_job(ctx, "VisualQuestionAnswering", {"question": "what is the main object in the "
                                   "image?"}, [img], label="Looking at the image")
        subject = (answer.text or "").strip() or "the main object"
        mask = await object_mask(ctx, img, subject, args["image"])
        cut = img.convert("RGBA")
        cut.putalpha(mask.for_cutout())
        return keep(ctx, cut, mask.job, self.name, {"subject": subject, "mask_by": mask.by},
                    lambda made: f"Made {made}: {subject} from {args['image']} on a transparent background.")
