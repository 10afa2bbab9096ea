"""edit_image: change an image by an instruction ("make it winter"), with FLUX.2 [klein] when it is loaded,
else InstructPix2Pix; with klein, also from up to 4 reference images ("put the cat from img1 on the sofa
in img2": img2 is the image, img1 a reference).

Klein's result keeps the image's size (core/tools/klein.py).
"""

from __future__ import annotations

import copy

from core.errors import BadArguments
from core.tools.base import (IMAGE_TO_CHANGE, Tool, ToolContext, ToolResult, images_param, keep, run_job,
                             text_param)
from core.tools.choose import loaded_models
from core.tools.klein import KLEIN, back, ready, size

PIX2PIX = "InstructPix2Pix"
MOST_REFERENCES = 4
NEEDS_KLEIN = ("Editing with reference images needs FLUX.2 [klein] (the Klein model), which is not loaded on "
               "this bot; an admin can load it with /load Klein. Without references I can still edit {image} "
               "by an instruction.")


class EditImage(Tool):
    name = "edit_image"
    description = "Change an image by an instruction, e.g. 'make it winter'."
    parameters = {"image": IMAGE_TO_CHANGE, "instruction": text_param("the change, in English"),
                  "reference_images": images_param("other images to take things from", MOST_REFERENCES)}
    any_of = ((KLEIN,), (PIX2PIX,))

    def offered(self, loaded: set[str]) -> Tool:
        if KLEIN in loaded:
            return self
        plain = copy.copy(self)  # InstructPix2Pix alone: no reference images to offer
        plain.parameters = {k: v for k, v in self.parameters.items() if k != "reference_images"}
        return plain

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        refs = args.get("reference_images") or []
        klein = KLEIN in await loaded_models(ctx)
        if refs and not klein:
            raise BadArguments(NEEDS_KLEIN.format(image=args["image"]))
        img = ctx.images.open(ctx.session, args["image"])
        params = {"prompt": args["instruction"]}
        if klein:
            work = ready(img)
            params.update(size(work))
            others = [ready(ctx.images.open(ctx.session, r)) for r in refs]
            out = await run_job(ctx, KLEIN, params, [work, *others], label="Editing")
            made = back(out.images[0], img)
        else:
            out = await run_job(ctx, PIX2PIX, params, [img], label="Editing")
            made = out.images[0]
        with_refs = f" with {', '.join(refs)}" if refs else ""
        return keep(ctx, made, out, self.name, dict(params, reference_images=refs) if refs else params,
                    lambda new: f"Made {new} from {args['image']}{with_refs}: {args['instruction']}.")
