"""make_variation: a new image close to a given one (the Variations button): img2img on the shared SD base.

A button, not offered to the LLM. The prompt is what the image was drawn from
when a model drew it from words, else its caption, else none: the image alone
leads. Each call draws with a new seed.
"""

from core.store import ImageRow
from core.tools.base import Tool, ToolContext, ToolResult, image_param, keep, on_image

# Pool models whose prompt describes the whole picture (InstructPix2Pix's is an instruction, Inpainting's
# describes the repainted part only, maps have none): Text2Image, the ControlNet generators, Variations.


class MakeVariation(Tool):
    name = "make_variation"
    description = "Draw a new image close to a given one: the same layout and colours, other details."
    parameters = {"image": image_param("the image to vary")}
    models = ("Variations",)

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        params = {"prompt": prompt_of(ctx.images.row(ctx.session, args["image"]))}
        _, out = await on_image(ctx, "Variations", params, "Varying")
        return keep(ctx, out.images[0], out, self.name, params,
                    lambda made: f"Made {made}, a variation of {args['image']}.")


def prompt_of(row: ImageRow) -> str:
    """What the image shows, in words, as well as the bot knows it."""
    model, asked = row.made.model or "", (row.made.model_params or {}).get("prompt")
    if asked and (model.endswith("Text2Image") or model == "Variations"):
        return asked
    return row.caption or ""
