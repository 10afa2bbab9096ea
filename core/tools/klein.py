"""What the tools that run FLUX.2 [klein] share: images it can take, and the size it draws an edit at.

klein takes images at least 64 px a side and draws at multiples of 16. A tool keeps an image's own size:
a smaller image is scaled up for the job (``ready``), the job draws at that size (at most about a
megapixel) rounded to multiples of 16 (``size``), and the result is scaled back to the image's size
(``back``).
"""

from __future__ import annotations

import math

from PIL import Image

KLEIN, KLEIN_INPAINT = "Klein", "KleinInpaint"
SMALLEST = 64  # px, klein's shortest side
MULTIPLE = 16
PIXELS = 1024 * 1024  # about what klein draws best


def ready(img: Image.Image, resample: Image.Resampling = Image.Resampling.LANCZOS) -> Image.Image:
    """``img``, scaled up so that its short side is at least 64 px (a mask: with NEAREST)."""
    short = min(img.size)
    if short >= SMALLEST:
        return img
    scale = SMALLEST / short
    return img.resize((max(SMALLEST, round(img.width * scale)), max(SMALLEST, round(img.height * scale))), resample)


def size(img: Image.Image) -> dict[str, int]:
    """The ``width`` and ``height`` klein draws an edit of ``img`` at: its size, at most about a megapixel
    (klein's own size; a larger image's result is scaled back up), rounded to multiples of 16."""
    scale = min(1.0, math.sqrt(PIXELS / (img.width * img.height)))
    return {"width": max(SMALLEST, round(img.width * scale / MULTIPLE) * MULTIPLE),
            "height": max(SMALLEST, round(img.height * scale / MULTIPLE) * MULTIPLE)}


def back(made: Image.Image, original: Image.Image) -> Image.Image:
    """klein's result at ``original``'s size."""
    return made if made.size == original.size else made.resize(original.size, Image.Resampling.LANCZOS)
