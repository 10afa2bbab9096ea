"""generate_image: draw a new image from a text description (Stable Diffusion)."""

from core.tools.base import Tool, ToolContext, ToolResult, int_param, run_job, save, text_param


class GenerateImage(Tool):
    name = "generate_image"
    description = "Draw a new image from a text description."
    parameters = {"prompt": text_param("what to draw, in English"),
                  "width": int_param("width in pixels (multiple of 8)", 64, 1024, optional=True),
                  "height": int_param("height in pixels (multiple of 8)", 64, 1024, optional=True)}
    models = ("Text2Image",)

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        side = ctx.limits.working_size
        params = {"prompt": args["prompt"], "width": _fit(args.get("width", side), ctx),
                  "height": _fit(args.get("height", side), ctx)}
        out = await run_job(ctx, "Text2Image", params, label="Drawing")
        row = save(ctx, out.images[0], out, parent=None, operation=self.name, params=params)
        return ToolResult(f"Drew {row.image_id} ({row.width}x{row.height}) from \"{args['prompt']}\".", [row.image_id])


def _fit(n: int, ctx: ToolContext) -> int:
    """Round to a multiple of 8 inside what the pool allows."""
    return max(64, min(ctx.limits.max_output_size, n // 8 * 8))
