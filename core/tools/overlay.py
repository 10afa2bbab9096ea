"""Drawing results over an image: labelled boxes, coloured masks and regions."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

OPACITY = 0.5  # of a mask's colour over the image


def colours(n: int) -> list[tuple[int, int, int]]:
    """``n`` bright colours, each far from the one before (golden-angle hues), the same every time."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75 if i % 2 else 0.95, 0.95)
        out.append((round(r * 255), round(g * 255), round(b * 255)))
    return out


def draw_boxes(img: Image.Image, boxes: list[list[float]], labels: list[str]) -> Image.Image:
    """A copy of ``img`` with each box outlined and its label on a filled tag at its top left."""
    out = img.convert("RGB")
    draw = ImageDraw.Draw(out)
    width = max(1, round(max(out.size) / 256))
    for box, label, colour in zip(boxes, labels, colours(len(boxes))):
        draw.rectangle(box, outline=colour, width=width)
        left, top, right, bottom = draw.textbbox((box[0], box[1]), label)
        tag_y = max(0, box[1] - (bottom - top) - 2)
        draw.rectangle((box[0], tag_y, box[0] + right - left + 4, tag_y + bottom - top + 2), fill=colour)
        draw.text((box[0] + 2, tag_y), label, fill=(0, 0, 0))
    return out


def paint_masks(img: Image.Image, masks: list[Image.Image]) -> Image.Image:
    """``img`` with each mask ("L", 0-255) tinted in its own colour, in proportion to the mask's value."""
    base = np.asarray(img.convert("RGB"), np.float32)
    out = base.copy()
    for mask, colour in zip(masks, colours(len(masks))):
        weight = np.asarray(mask.convert("L"), np.float32)[..., None] / 255 * OPACITY
        out = out * (1 - weight) + np.array(colour, np.float32) * weight
    return Image.fromarray(out.round().astype(np.uint8))


def paint_regions(img: Image.Image, labels: Image.Image) -> Image.Image:
    """``img`` with the regions of a label map ("L": 0 none, 1..n a region) tinted, one colour each."""
    ids = np.asarray(labels.convert("L"))
    palette = np.array([(0, 0, 0)] + colours(int(ids.max())), np.float32)
    base = np.asarray(img.convert("RGB"), np.float32)
    weight = (ids > 0)[..., None] * OPACITY
    out = base * (1 - weight) + palette[ids] * weight
    return Image.fromarray(out.round().astype(np.uint8))
