"""extend_image: grow an image to W x H by painting what lies beyond its borders.

The seed's InfinityOutPainting: describe the picture (caption, and ask VQA
for its background and style), then repeatedly place the image at the centre
of a larger canvas and inpaint the new border, at most doubling each side per
round, and blend the seam with a feathered mask so it does not show.
In the modern profile Florence-2's detailed caption (which names the background
and the style) describes the picture and FLUX.2 [klein]'s inpainting
(KleinInpaint, sides in multiples of 16) paints the border.
"""

from __future__ import annotations

from PIL import Image, ImageFilter, ImageOps

from core.errors import BadArguments
from core.templates.masks import PAINTERS
from core.tools.base import JobOutput, Tool, ToolContext, ToolResult, image_param, int_param, keep, run_job
from core.tools.choose import combined, first_loaded
from settings.models import SIDE_MULTIPLE

EXPAND = 2.0  # largest growth per round, as the seed
CROP = 8  # pixels trimmed from a growing side: generated borders are often smeared
FEATHER = 16  # width of the blended seam in pixels
DESCRIBERS = (("Florence2",), ("ImageCaptioning", "VisualQuestionAnswering"))


class ExtendImage(Tool):
    name = "extend_image"
    description = "Extend an image beyond its borders to a larger size (outpainting)."
    parameters = {"image": image_param("the image to extend"),
                  "width": int_param("the new width in pixels", 8, 4096),
                  "height": int_param("the new height in pixels", 8, 4096)}
    any_of = combined(DESCRIBERS, PAINTERS)

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        img = ctx.images.open(ctx.session, args["image"]).convert("RGB")
        target = self._target(ctx, img, args["width"], args["height"])
        prompt = await self._describe(ctx, img)
        (painter,) = await first_loaded(ctx, *PAINTERS)
        rounds, job = 0, None
        while img.size != target:
            rounds += 1
            # the last round's job made the border
            img, job = await self._grow(ctx, img, target, prompt, rounds, painter)
        params = {"width": target[0], "height": target[1], "prompt": prompt}
        return keep(ctx, img, job, self.name, params,
                    lambda made: f"Made {made}: {args['image']} extended to {target[0]}x{target[1]} ({prompt}).")

    def _target(self, ctx: ToolContext, img: Image.Image, width: int, height: int) -> tuple[int, int]:
        most = ctx.limits.max_output_size
        for key, value, now in (("width", width, img.width), ("height", height, img.height)):
            if not now <= value <= most:
                raise BadArguments(f"'{key}' must be between {now} (the image's {key} now) and {most}, got {value}.")
        if (width, height) == img.size:
            raise BadArguments(f"The image is already {width}x{height}; ask for a larger size.")
        return width // 8 * 8 if width > img.width else width, height // 8 * 8 if height > img.height else height

    async def _describe(self, ctx: ToolContext, img: Image.Image) -> str:
        if await first_loaded(ctx, *DESCRIBERS) == ("Florence2",):
            out = await run_job(ctx, "Florence2", {"task": "detailed_caption"}, [img], label="Looking at the image")
            return (out.text or "").strip() or "a detailed scene"
        caption = (await run_job(ctx, "ImageCaptioning", {}, [img], label="Looking at the image")).text or ""
        ask = {"question": "what is the background color of this image?"}
        background = (await run_job(ctx, "VisualQuestionAnswering", ask, [img], label="Looking at the image")).text
        ask = {"question": "what is the style of this image?"}
        style = (await run_job(ctx, "VisualQuestionAnswering", ask, [img], label="Looking at the image")).text
        parts = [caption.strip()]
        if background and background.strip():
            parts.append(f"{background.strip()} background")
        if style and style.strip():
            parts.append(f"{style.strip()} style")
        return ", ".join(p for p in parts if p) or "a detailed scene"

    async def _grow(self, ctx: ToolContext, img: Image.Image, target: tuple[int, int], prompt: str,
                    round_no: int, painter: str) -> tuple[Image.Image, JobOutput]:
        # trim the sides that still grow, then place at the centre of a larger canvas
        cw = CROP if img.width < target[0] and img.width > 4 * CROP else 0
        ch = CROP if img.height < target[1] and img.height > 4 * CROP else 0
        inner = ImageOps.crop(img, (cw, ch, cw, ch))
        size = (min(target[0], int(inner.width * EXPAND) // 8 * 8 or target[0]),
                min(target[1], int(inner.height * EXPAND) // 8 * 8 or target[1]))
        size = (max(size[0], inner.width), max(size[1], inner.height))
        x, y = (size[0] - inner.width) // 2, (size[1] - inner.height) // 2
        canvas = Image.new("RGB", size, "white")
        canvas.paste(inner, (x, y))
        mask = Image.new("L", size, 255)
        mask.paste(0, (x, y, x + inner.width, y + inner.height))
        work = canvas.resize(_multiple_of(size, SIDE_MULTIPLE.get(painter, 8)), Image.Resampling.LANCZOS)
        work_mask = mask.resize(work.size, Image.Resampling.NEAREST)
        out = await run_job(ctx, painter, {"prompt": prompt}, [work, work_mask],
                            label=f"Extending (round {round_no})")
        painted = out.images[0].resize(size, Image.Resampling.LANCZOS)
        return _blend(painted, inner, (x, y)), out


def _multiple_of(size: tuple[int, int], step: int) -> tuple[int, int]:
    return max(64, size[0] // step * step), max(64, size[1] // step * step)


def _blend(painted: Image.Image, original: Image.Image, at: tuple[int, int]) -> Image.Image:
    """Put the original back over the painted canvas, fading out over FEATHER pixels at its edge."""
    alpha = Image.new("L", original.size, 0)
    inset = min(FEATHER // 2, original.width // 4, original.height // 4)
    alpha.paste(255, (inset, inset, original.width - inset, original.height - inset))
    alpha = alpha.filter(ImageFilter.GaussianBlur(inset / 2 or 0.1))
    out = painted.copy()
    out.paste(original, at, alpha)
    return out
