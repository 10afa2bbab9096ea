"""The image store: uploads validated before use, ids scoped to their session."""

from __future__ import annotations

import io
import logging
import struct
import zlib

import pytest
from PIL import Image

from core.errors import BadImage, UnknownImage
from core.images import ImageStore, fit_size
from core.store import MIGRATIONS, Store
from testkit.images import png_chunk, png_text_bomb


@pytest.fixture
def images(tmp_path):
    store = Store(tmp_path / "bot.db")
    return ImageStore(tmp_path / "images", store, max_pixels=40_000_000, max_bytes=5_000_000, working_size=512)


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that announces width x height but carries almost no data: a decompression bomb's shape."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + png_chunk(b"IEND", b""))


def files_under(root):
    return sorted(p.name for p in root.rglob("*") if p.is_file())


def test_upload_is_normalised_and_stored_by_content(images):
    photo = Image.new("RGB", (1000, 601), (10, 120, 200))
    row = images.ingest("discord:c1", "photo.jpg", encode(photo, "JPEG"))
    assert (row.image_id, row.width, row.height, row.mode) == ("img1", 512, 304, "RGB")
    assert row.operation == "upload" and row.parent is None and row.params == {"filename": "photo.jpg"}
    assert images.path(row).name == f"{row.sha256}.png"
    again = images.ingest("discord:c1", "copy.jpg", encode(photo, "JPEG"))
    assert again.image_id == "img2" and again.path == row.path  # same content, one file
    assert images.open("discord:c1", "img2").size == (512, 304)


def test_exif_orientation_and_alpha(images):
    tall = Image.new("RGB", (80, 40), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the camera held sideways
    row = images.ingest("s", "phone.jpg", encode(tall, "JPEG", exif=exif))
    assert (row.width, row.height) == (40, 80)
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    img = images.open("s", images.ingest("s", "logo.png", encode(clear)).image_id)
    assert img.mode == "RGB" and img.getpixel((5, 5)) == (255, 255, 255)


def test_fit_size_rounds_to_multiples_of_8():
    assert fit_size(1000, 601, 512) == (512, 304)
    assert fit_size(100, 50, 512) == (96, 48)
    assert fit_size(96, 64, 64) == (64, 40)  # 8-rounding moves the aspect by 7%: kept


def test_fit_size_keeps_the_aspect_of_slivers():
    assert fit_size(5, 3, 512) == (13, 8)  # scaled up to 8 px on the short side, not squared to 8x8
    assert fit_size(7, 3, 512) == (19, 8)
    assert fit_size(4000, 100, 512) == (512, 13)  # not 512x8
    assert fit_size(100, 4000, 512) == (13, 512)
    assert fit_size(1, 1, 512) == (8, 8)


def aspect_kept(size, original, slack=0.1):
    return abs(size[0] / size[1] / (original[0] / original[1]) - 1) <= slack


@pytest.mark.parametrize("size", [(7, 3), (3, 7), (4000, 100), (100, 4000)])
def test_odd_aspect_uploads_keep_their_shape(images, size):
    """Issue 26: a 7x3 upload was stored 8x8 (and edited square), a 4000x100 one 512x8."""
    stripes = Image.new("RGB", size, (200, 30, 30))
    row = images.ingest("s", "odd.png", encode(stripes))
    stored = images.open("s", row.image_id)
    assert stored.size == (row.width, row.height) and max(stored.size) <= 512
    assert aspect_kept(stored.size, size), f"{size} stored as {stored.size}"


def test_decompression_bomb_png(images, tmp_path):
    with pytest.raises(BadImage) as e:
        images.ingest("s", "bomb.png", png_header_only(30_000, 30_000))
    assert str(e.value) == ("bomb.png is too large: 900,000,000 pixels; the limit is 40,000,000 pixels. "
                            "Send a smaller image.")
    with pytest.raises(BadImage) as e:
        images.ingest("s", "wide.png", png_header_only(8_000, 6_000))
    assert str(e.value) == ("wide.png is too large: 8,000 x 6,000 = 48,000,000 pixels; the limit is "
                            "40,000,000 pixels. Send a smaller image.")
    assert files_under(tmp_path / "images") == []


def test_ten_thousand_square_image(images):
    big = encode(Image.new("L", (10_000, 10_000)), "PNG")  # compresses to a small file
    with pytest.raises(BadImage) as e:
        images.ingest("s", "huge.png", big)
    assert str(e.value) == ("huge.png is too large: 100,000,000 pixels; the limit is 40,000,000 pixels. "
                            "Send a smaller image.")


def test_truncated_jpeg(images, tmp_path, caplog):
    data = encode(Image.effect_noise((256, 256), 50).convert("RGB"), "JPEG")
    with caplog.at_level(logging.INFO, "core.images"), pytest.raises(BadImage) as e:
        images.ingest("s", "cut.jpg", data[: len(data) // 2])
    assert str(e.value) == ("cut.jpg is damaged or truncated, so I cannot read it. Open it on your side and save "
                            "or export it again, then send that.")
    assert any(r.message.startswith("could not decode cut.jpg: ") for r in caplog.records)  # the cause: for admins
    assert files_under(tmp_path / "images") == []
    assert images.store.images("s") == []


def test_sixteen_bit_grayscale_is_scaled_not_clipped(images):
    row16 = bytes(b for v in range(256) for b in (v * 257).to_bytes(2, "little"))
    ramp = Image.frombytes("I;16", (256, 64), row16 * 64)
    img = images.open("s", images.ingest("s", "scan.png", encode(ramp)).image_id)
    assert [img.getpixel((x, 10)) for x in (0, 64, 128, 255)] == [(0, 0, 0), (64, 64, 64), (128, 128, 128),
                                                                 (255, 255, 255)]


def test_a_png_text_chunk_bomb_says_what_to_do(images):
    bomb = png_text_bomb()  # 4 MB of metadata in a 4 KB chunk
    with pytest.raises(BadImage) as e:
        images.ingest("s", "meme.png", bomb)
    assert str(e.value) == ("meme.png carries too much embedded text (metadata) for me to read it safely. Export "
                            "it again without metadata, e.g. as a new PNG or JPEG, and send that.")
    assert "MAX_TEXT" not in str(e.value) and images.store.images("s") == []


@pytest.mark.parametrize("size", [(1, 1), (7, 3)])
def test_tiny_uploads_are_stored(images, size):
    row = images.ingest("s", "dot.png", encode(Image.new("RGB", size, (200, 30, 30))))
    stored = images.open("s", row.image_id)
    assert stored.size == (row.width, row.height)
    assert stored.getpixel((row.width // 2, row.height // 2)) == (200, 30, 30)


def test_text_file_named_png(images):
    with pytest.raises(BadImage) as e:
        images.ingest("s", "cat.png", b"meow, I am definitely a cat\n")
    assert str(e.value) == "cat.png is not an image: it looks like a text file."
    with pytest.raises(BadImage) as e:
        images.ingest("s", "cat.png", b"<!DOCTYPE html><html><body>Sign in to Slack</body></html>")
    assert str(e.value) == "cat.png is not an image: it looks like a web page."


def test_file_too_many_bytes(images):
    with pytest.raises(BadImage) as e:
        images.ingest("s", "raw.bmp", b"BM" + b"\0" * 6_000_000)
    assert str(e.value) == "raw.bmp is 5.7 MiB; the limit is 4.8 MiB. Send a smaller file."


def test_image_ids_are_scoped_to_their_session(images):
    images.ingest("slack:C1", "a.png", encode(Image.new("RGB", (64, 64))))
    images.ingest("slack:C2", "b.png", encode(Image.new("RGB", (64, 64))))
    images.ingest("slack:C2", "c.png", encode(Image.new("RGB", (64, 64), (1, 2, 3))))
    with pytest.raises(UnknownImage) as e:
        images.open("slack:C1", "img2")
    assert str(e.value) == "'img2' does not exist in this conversation; images: img1."
    with pytest.raises(UnknownImage) as e:
        images.open("slack:C1", "../../etc/passwd")
    assert str(e.value) == "'../../etc/passwd' does not exist in this conversation; images: img1."
    with pytest.raises(UnknownImage) as e:
        images.open("slack:C3", "img1")
    assert str(e.value) == "'img1' does not exist in this conversation; there are no images yet; upload one first."


def test_session_reset_clears_only_that_session(images):
    images.ingest("a", "a.png", encode(Image.new("RGB", (64, 64))))
    images.ingest("b", "b.png", encode(Image.new("RGB", (64, 64))))
    images.store.add_message("a", "user", "hello")
    images.store.reset("a")
    assert images.store.images("a") == [] and images.store.messages("a") == []
    assert [r.image_id for r in images.store.images("b")] == ["img1"]
    assert images.ingest("a", "again.png", encode(Image.new("RGB", (64, 64), 9))).image_id == "img1"


def test_store_survives_reopen(tmp_path):
    store = Store(tmp_path / "bot.db")
    store.add_message("s", "user", "make it winter", user="u1")
    store.add_message("s", "assistant", None, tool_calls=[{"id": "c1", "function": {"name": "edit_image"}}])
    reopened = Store(tmp_path / "bot.db")
    msgs = reopened.messages("s")
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert msgs[1]["tool_calls"][0]["function"]["name"] == "edit_image"
    # each migration applied once, in order, and none again on reopening
    assert [r["name"] for r in reopened.db["_migrations"].rows] == [m.__name__ for m in MIGRATIONS]
