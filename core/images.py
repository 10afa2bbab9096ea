"""The image store: validate uploads, keep image files by content, name them per session.

Uploads are checked before anything else touches them: size in bytes, pixel
count read from the header before decoding (decompression bombs), a full
decode (truncated files), then EXIF orientation, RGB, and a resize to fit the
working size, its aspect ratio kept (``fit_size``). Files live under ``images/`` named
by their SHA-256, written to a temporary name and renamed, so nothing
half-written is ever visible. The LLM only ever sees ids like ``img3``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import sqlite3
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import DISK_FULL, BadImage, DiskFull, ImageGone, UnknownImage, no_room
from core.store import ImageRow, Provenance, Store
from settings.units import mib

log = logging.getLogger(__name__)
_ID = re.compile(r"^img[1-9][0-9]{0,6}$")


def fit_size(width: int, height: int, working: int) -> tuple[int, int]:
    """The stored size: the aspect ratio kept, the long side at most ``working``.

    Sides are multiples of 8 (what the Stable Diffusion tools work in) where rounding down to 8 moves
    the aspect ratio by at most 10%, as for any photo; otherwise (a 7x3 sliver, a 4000x100 banner at
    512) the scaled size is kept to the pixel: the pool fits it to the working size for the SD tools
    (padding, not squashing), so squaring a 7x3 upload to 8x8 here would lose the picture. An image
    whose short side would fall under 8 px is scaled up to 8 (a 7x3 upload is stored 19x8), within
    ``working`` on the long side; only a sliver longer than ``working / 8`` to 1 is squashed to 8 px.
    """
    long, short = max(width, height), min(width, height)
    scale = min(1.0, working / long)
    if short * scale < 8:
        scale = min(working / long, 8 / short)
    exact = max(1, round(width * scale)), max(1, round(height * scale))
    eights = max(8, int(width * scale) // 8 * 8), max(8, int(height * scale) // 8 * 8)
    aspect = width / height
    return eights if abs(eights[0] / eights[1] / aspect - 1) <= 0.1 else (max(8, exact[0]), max(8, exact[1]))


def encode(img: Image.Image) -> bytes:
    """The PNG the store keeps (fast compression: 4-28 ms at 512 px)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _eight_bit(img: Image.Image) -> Image.Image:
    """Grayscale deeper than 8 bits scaled to 8 (16-bit PNGs, 32-bit TIFFs); Pillow's convert()
    would clip every value over 255, so a 16-bit photo came out white."""
    if not (img.mode == "I" or img.mode.startswith("I;16") or img.mode == "F"):
        return img
    values = np.asarray(img)
    if img.mode == "F":
        low, high = float(values.min()), float(values.max())
        scaled = np.rint((values - low) * (255.0 / ((high - low) or 1.0)))
        return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L")
    high = max(65535, int(values.max(initial=0)))  # 16-bit unless the values say otherwise
    wide = np.clip(values, 0, None).astype(np.uint32 if high == 65535 else np.int64)  # negatives are black
    return Image.fromarray(((wide * 255 + high // 2) // high).astype(np.uint8), "L")


def _what_is_it(data: bytes) -> str:
    head = data[:512]
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "it looks like a web page"
    if head.startswith(b"%PDF"):
        return "it looks like a PDF document"
    try:
        head.decode("utf-8")
        return "it looks like a text file"
    except UnicodeDecodeError:
        return "its content is not a format I can read (PNG, JPEG, WebP, GIF, BMP)"


class ImageStore:
    def __init__(self, root: Path, store: Store, *, max_pixels: int, max_bytes: int, working_size: int):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.max_pixels, self.max_bytes, self.working_size = max_pixels, max_bytes, working_size

    # --- in -----------------------------------------------------------------

    def decode_upload(self, filename: str, data: bytes) -> Image.Image:
        """Validate and normalise an upload; raises BadImage saying what is wrong. CPU-heavy for a
        large image: call it off the event loop (the core does)."""
        name = filename or "the file"
        if len(data) > self.max_bytes:
            raise BadImage(f"{name} is {mib(len(data))}; the limit is {mib(self.max_bytes)}. Send a smaller file.")
        if not data:
            raise BadImage(f"{name} is empty.")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
                w, h = img.size  # from the header: nothing is decoded yet
                if w * h > self.max_pixels:
                    raise BadImage(self._too_many(name, f"{w:,} x {h:,} = {w * h:,}"))
                img.draft("RGB", fit_size(w, h, self.working_size))  # JPEG: decode at a reduced scale
                img.load()
        except BadImage:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            # Pillow's own guard fires inside open() for the very largest headers
            found = re.search(r"\((\d+) pixels\)", str(e))
            raise BadImage(self._too_many(name, f"{int(found[1]):,}" if found else "too many")) from None
        except UnidentifiedImageError:
            raise BadImage(f"{name} is not an image: {_what_is_it(data)}.") from None
        except (OSError, SyntaxError, ValueError) as e:
            log.info("could not decode %s: %s", name, e)
            if "text chunk" in str(e).lower() or "MAX_TEXT" in str(e):  # PNG text-chunk (metadata) bomb
                raise BadImage(f"{name} carries too much embedded text (metadata) for me to read it safely. "
                               "Export it again without metadata, e.g. as a new PNG or JPEG, and send that.") from None
            raise BadImage(f"{name} is damaged or truncated, so I cannot read it. "
                           "Open it on your side and save or export it again, then send that.") from None
        img = ImageOps.exif_transpose(img)
        img = _eight_bit(img)
        if img.mode != "RGB":
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))  # transparent parts become white, not black
        size = fit_size(img.width, img.height, self.working_size)
        if size != img.size:
            img = img.resize(size, Image.Resampling.LANCZOS)
        return img

    def _too_many(self, name: str, pixels: str) -> str:
        return (f"{name} is too large: {pixels} pixels; the limit is {self.max_pixels:,} pixels. "
                "Send a smaller image.")

    def ingest(self, session: str, filename: str, data: bytes) -> ImageRow:
        """Validate an upload and add it to the session as a new image."""
        return self.add_upload(session, filename, self.decode_upload(filename, data))

    def add_upload(self, session: str, filename: str, img: Image.Image, png: bytes | None = None) -> ImageRow:
        """Add an upload ``decode_upload`` accepted to the session as a new image (``png``: see ``add``)."""
        return self.add(session, img, parent=None, operation="upload", params={"filename": filename}, png=png)

    def add(self, session: str, img: Image.Image, *, parent: str | None, operation: str,
            params: dict[str, Any], png: bytes | None = None, made: Provenance = Provenance()) -> ImageRow:
        """Store an image (an upload or a tool's output, with how it was made) and give it the session's next id.
        ``png``: the image already encoded by ``encode`` (off the event loop)."""
        data = png if png is not None else encode(img)
        digest = hashlib.sha256(data).hexdigest()
        rel = f"{digest[:2]}/{digest}.png"
        try:
            self._write(self.root / rel, data)
            row = ImageRow(session, self.store.new_image_id(session), rel, digest, parent, operation, params,
                           img.width, img.height, img.mode, None, made)
            row = self.store.add_image(row)
        except (OSError, sqlite3.OperationalError) as e:
            if not no_room(e):
                raise
            log.error("session %s: no room to store a %s image under %s: %s", session, operation, self.root, e)
            raise DiskFull(DISK_FULL) from None
        log.info("session %s: %s %s (%dx%d %s)", session, row.image_id, operation, img.width, img.height, img.mode)
        return row

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        """Write a file whole or not at all: a temporary name, then a rename; a failed write (a full disk)
        leaves nothing behind. A file already there holds the same bytes (the name is their hash)."""
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # on disk before the row that names it is
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # --- out ----------------------------------------------------------------

    def row(self, session: str, image_id: Any) -> ImageRow:
        """The session's image ``image_id``; raises UnknownImage naming the ids that exist."""
        row = self.store.image(session, image_id) if isinstance(image_id, str) and _ID.match(image_id) else None
        if row is None:
            ids = [r.image_id for r in self.store.images(session)]
            have = f"images: {', '.join(ids)}" if ids else "there are no images yet; upload one first"
            raise UnknownImage(f"{str(image_id)[:40]!r} does not exist in this conversation; {have}.")
        return row

    def open(self, session: str, image_id: Any) -> Image.Image:
        row = self.row(session, image_id)
        try:
            with Image.open(self.root / row.path) as img:
                img.load()
                return img
        except FileNotFoundError:  # someone cleaned the data directory: say so, no traceback
            log.warning("%s of %s: its file %s is missing", row.image_id, session, self.root / row.path)
            raise ImageGone(f"{row.image_id} is no longer stored: its file is missing from the bot's data. Upload it "
                            "again to work on it, or ask me for a new one.") from None

    def path(self, row: ImageRow) -> Path:
        return self.root / row.path
