"""make_variation: a new image close to a given one (the Variations button): img2img on the shared SD base,
or FLUX.2 [klein]'s edit of it asked for a variation when klein is loaded (the modern profile).

A button, not offered to the LLM. The prompt is what the image was drawn from
when a model drew it from words, else its caption, else none: the image alone
leads. Each call draws with a new seed.
"""

from core.store import ImageRow
from core.tools.base import Tool, ToolContext, ToolResult, image_param, keep, on_image, run_job
from core.tools.choose import first_loaded
from core.tools.klein import back, ready, size

KLEIN_VARIATION = "A variation of this image: the same subject, layout and colours, with other details."

# Pool models whose prompt describes the whole picture (InstructPix2Pix's is an instruction, Inpainting's
# describes the repainted part only, maps have none): Text2Image, the ControlNet generators, Variations, and
# whatever drew for generate_image (klein).


class MakeVariation(Tool):
    name = "make_variation"
    description = "Draw a new image close to a given one: the same layout and colours, other details."
    parameters = {"image": image_param("the image to vary")}
    any_of = (("Klein",), ("Variations",))

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        about = prompt_of(ctx.images.row(ctx.session, args["image"]))
        if await first_loaded(ctx, *self.any_of) == ("Klein",):
            img = ctx.images.open(ctx.session, args["image"])
            work = ready(img)
            params = {"prompt": f"{KLEIN_VARIATION} {about}".strip(), **size(work)}
            out = await run_job(ctx, "Klein", params, [work], label="Varying")
            made = back(out.images[0], img)
        else:
            params = {"prompt": about}
            _, out = await on_image(ctx, "Variations", params, "Varying")
            made = out.images[0]
        return keep(ctx, made, out, self.name, params,
                    lambda made: f"Made {made}, a variation of {args['image']}.")


def prompt_of(row: ImageRow) -> str:
    """What the image shows, in words, as well as the bot knows it."""
    model, asked = row.made.model or "", (row.made.model_params or {}).get("prompt")
    if asked and (model.endswith("Text2Image") or model == "Variations" or row.operation == "generate_image"):
        return asked
    return row.caption or ""
