"""Test pictures shared by tests and benches."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image, ImageDraw


def house(sky=(120, 160, 200), size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A house under a sky: a red roof on a plain background (96x64 unless ``size`` says otherwise)."""
    img = Image.new("RGB", size, sky)
    ImageDraw.Draw(img).polygon([(20, 40), (48, 12), (76, 40)], fill=(150, 40, 30))  # a roof
    return img


def square_mask(size: tuple[int, int] = (96, 64), box=(10, 10, 40, 40)) -> Image.Image:
    """A black mask with one white square (what inpainting fills)."""
    m = Image.new("L", size, 0)
    ImageDraw.Draw(m).rectangle(box, fill=255)
    return m


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_text_bomb(text_bytes: int = 4_000_000) -> bytes:
    """An 8x8 PNG carrying ``text_bytes`` of metadata in a zTXt chunk of a few KB, right after IHDR."""
    small = png_bytes(Image.new("RGB", (8, 8)))
    return small[:33] + png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"a" * text_bytes)) + small[33:]
