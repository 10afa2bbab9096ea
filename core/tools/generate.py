"""generate_image: draw a new image from a text description (FLUX.2 [klein] when it is loaded, else
Stable Diffusion 1.5: the first loaded of ``DRAWING_MODELS``).

The LLM may ask for a shape (``aspect_ratio``: "a wide banner" is 16:9) or a size; /imagine may also set
the seed, the steps (at most ``[limits] max_steps``) and which drawing model draws (``DRAWING_MODELS``).
Each model draws at its own size: SD1.5 about a ``working_size`` square in multiples of 8, klein about a
megapixel (``NATIVE_SIDE``) in multiples of 16, both within ``max_output_size``.
"""

import math

from core.errors import BadArguments
from core.tools.base import (Tool, ToolContext, ToolResult, choice_param, command_only, int_param, run_job, save,
                             text_param)
from core.tools.choose import first_loaded
from settings.models import DRAWING_MODELS, NATIVE_SIDE, SIDE_MULTIPLE

ASPECTS = ("1:1", "3:2", "2:3", "16:9", "9:16")
MIN_SIDE = 64  # the pool's smallest width or height


class GenerateImage(Tool):
    name = "generate_image"
    description = "Draw a new image from a text description."
    parameters = {"prompt": text_param("what to draw, in English"),
                  "width": int_param("width in pixels (multiple of 8)", 64, 1024, optional=True),
                  "height": int_param("height in pixels (multiple of 8)", 64, 1024, optional=True),
                  "aspect_ratio": choice_param("shape, width:height (16:9 wide, 9:16 tall)", ASPECTS, optional=True),
                  "seed": command_only(int_param("random seed: the same seed and prompt draw the same image",
                                                 0, 2**32 - 1)),
                  "steps": command_only(int_param("diffusion steps (more: finer, slower)", 1, 1000)),
                  "model": command_only(choice_param("the drawing model", DRAWING_MODELS))}
    any_of = tuple((m,) for m in DRAWING_MODELS)  # any one drawing model loaded

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        limits = ctx.limits
        model = args.get("model") or (await first_loaded(ctx, *((m,) for m in DRAWING_MODELS)))[0]
        side = min(limits.max_output_size, max(limits.working_size, NATIVE_SIDE.get(model, 0)))
        step = SIDE_MULTIPLE.get(model, 8)
        if args.get("aspect_ratio"):
            width, height = aspect_size(args["aspect_ratio"], side, limits.max_output_size, step)
        else:
            width, height = (_fit(args.get(k, side), ctx, step) for k in ("width", "height"))
        if (steps := args.get("steps")) is not None and steps > limits.max_steps:
            raise BadArguments(f"'steps' must be between 1 and {limits.max_steps}, got {steps}.")
        params = {"prompt": args["prompt"], "width": width, "height": height}
        params.update({k: args[k] for k in ("seed", "steps") if args.get(k) is not None})
        out = await run_job(ctx, model, params, label="Drawing")
        row = save(ctx, out.images[0], out, parent=None, operation=self.name, params=params)
        return ToolResult(f"Drew {row.image_id} ({row.width}x{row.height}) from \"{args['prompt']}\".", [row.image_id])


def _fit(n: int, ctx: ToolContext, step: int = 8) -> int:
    """Round down to a multiple of ``step`` inside what the pool allows."""
    return max(64, min(ctx.limits.max_output_size // step * step, n // step * step))


def aspect_size(aspect: str, working: int, largest: int, step: int = 8) -> tuple[int, int]:
    """Width and height for ``aspect`` ("16:9"): about the pixels of a ``working`` square (512: 680x384),
    each side a multiple of ``step``, at least 64 and at most ``largest``."""
    w, h = (int(n) for n in aspect.split(":"))
    scale = working / math.sqrt(w * h)
    scale = max(scale, MIN_SIDE / min(w, h))  # a thin shape grows to the smallest side the pool draws
    scale = min(scale, largest / max(w, h))
    most = largest // step * step
    return tuple(min(most, max(MIN_SIDE, round(side * scale / step) * step)) for side in (w, h))
