"""The listener's tools, written once for both faces (the OpenAI images routes and the MCP tools).

Each tool checks the key (its models, its rate and quota), runs pool jobs through the ``Backend``
(``gpu_pool/backend.py``: the local pool or the Ray front, the same job path the bot uses), reports
diffusion steps to a progress callback, and applies the safety filter to drawn images. A failure is
an :class:`ApiFailure` with an HTTP status and words for the client; the faces turn it into an
OpenAI error body or an MCP tool error. Leaving a tool early (a client that went away, a cancelled
MCP call) closes the job's event stream, which cancels the pool job and frees the device.

The multi-step tools (segment_object, remove_background) are the chat's flows redone here with
the pool's models, since the pool imports nothing of the core: GroundingDINO boxes and SAM masks
where both are loaded, CLIPSeg (Text2Mask) otherwise.
"""

from __future__ import annotations

import base64
import binascii
import asyncio
import contextlib
import io
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from collections.abc import AsyncIterator

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

import settings
from gpu_pool.api.keys import ApiKey, Keys, OverLimit
from gpu_pool.protocol import Event, JobRequest, ModelInfo, RawImage

log = logging.getLogger(__name__)

# The model each drawing tool runs: the SD1.5 family's where the config has it, else FLUX.2 [klein]'s (the
# modern profile, config.modern.toml, has only klein to draw with).
DRAWERS = {"generate": ("Text2Image", "Klein"), "edit": ("InstructPix2Pix", "Klein"),
           "repaint": ("Inpainting", "KleinInpaint")}

# What the client reads when the safety filter keeps an image back (the chat's words, core/safety.py).
WITHHELD = "The image was withheld by this server's safety filter."
UNCHECKED = ("The image was withheld: this server's safety filter is not running right now, so drawn images are "
             "not sent. The pool's admins can see why in its log.")
STATUS = {"bad_request": 400, "unknown_model": 404, "not_loaded": 404, "load_failed": 503, "oom": 503,
          "too_large": 503, "cancelled": 499, "internal": 500, "unavailable": 503}
PRECISE = ("Text2Box", "Segmenting")  # boxes, then SAM's outlines: the precise way to an object's mask
MAIN_OBJECT = "what is the main object in the image?"

Progress = Callable[[int, int, str], Awaitable[None]]  # (progress, total, message)


class ApiFailure(Exception):
    """Why a request gets no result: ``status`` (HTTP), the words for the client, an OpenAI-style ``code``."""

    def __init__(self, status: int, message: str, code: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.code, self.retry_after = status, code, retry_after


class Jobs(Protocol):
    """What the listener needs of the pool: ``backend.Backend`` has both (so does core's PoolClient)."""

    def run(self, request: JobRequest) -> AsyncIterator[Event]: ...

    async def models(self) -> list[ModelInfo]: ...


@dataclass
class Done:
    images: list[Image.Image] = field(default_factory=list)
    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)


async def _no_progress(progress: int, total: int, message: str) -> None:
    return None


class Service:
    def __init__(self, pool: Callable[[], Jobs], config: settings.Config, keys: Keys):
        self._pool, self.config, self.keys = pool, config, keys

    @property
    def pool(self) -> Jobs:
        return self._pool()

    def drawer(self, tool: str) -> str:
        """The model that draws for ``tool`` (``DRAWERS``): the SD1.5 family's unless only klein's is configured."""
        sd, klein = DRAWERS[tool]
        return klein if sd not in self.config.models and klein in self.config.models else sd

    # --- the tools ---------------------------------------------------------------------------

    def check_n(self, n: Any) -> int:
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= self.config.api.max_n:
            raise ApiFailure(400, f"n must be a whole number between 1 and {self.config.api.max_n}; got {n!r}.",
                             "invalid_n")
        return n

    async def generate(self, key: ApiKey, prompt: str, n: int = 1, size: tuple[int, int] | None = None,
                       progress: Progress = _no_progress, **params: Any) -> list[Image.Image]:
        n, job = self.check_n(n), {"prompt": _text(prompt, "prompt"), **_given(params)}
        if size:
            job["width"], job["height"] = size
        return await self._draw(key, self.drawer("generate"), n, lambda i: (_seeded(job, i), []), progress)

    async def edit(self, key: ApiKey, images: list[Image.Image], prompt: str, mask: Image.Image | None = None,
                   n: int = 1, progress: Progress = _no_progress) -> list[Image.Image]:
        """Each image edited as the prompt says, ``n`` results per image, image 1's first: with a mask (white or
        transparent = repaint, OpenAI's convention) by Inpainting, without one by InstructPix2Pix (klein's
        KleinInpaint and Klein where the config has only those, ``drawer``)."""
        prompt, n = _text(prompt, "prompt"), self.check_n(n)
        if not 1 <= len(images) <= 4:
            raise ApiFailure(400, f"Send 1 to 4 images to edit; got {len(images)}.", "invalid_image")
        if mask is not None:
            mask = _repaint_area(mask)
            for i, im in enumerate(images, 1):
                if im.size != mask.size:
                    raise ApiFailure(400, f"The mask is {mask.width}x{mask.height} but image {i} is "
                                          f"{im.width}x{im.height}; the mask must be the size of every image.",
                                     "invalid_mask")
        model = self.drawer("repaint" if mask is not None else "edit")
        per = [(im, i) for im in images for i in range(n)]
        return await self._draw(key, model, len(per), lambda j: ({"prompt": prompt},
                                                                 [per[j][0], *([mask] if mask else [])]), progress)

    async def variations(self, key: ApiKey, image: Image.Image, n: int = 1,
                         progress: Progress = _no_progress) -> list[Image.Image]:
        return await self._draw(key, "Variations", self.check_n(n), lambda i: ({}, [image]), progress)

    async def upscale(self, key: ApiKey, image: Image.Image, progress: Progress = _no_progress) -> Image.Image:
        return (await self._draw(key, "Upscale", 1, lambda i: ({}, [image]), progress))[0]

    async def caption(self, key: ApiKey, image: Image.Image) -> str:
        self._take(key, ["ImageCaptioning"], 0)
        text = (await self._job(key, "ImageCaptioning", {}, [image])).text.strip()
        return text or "The captioning model gave no caption for this image."

    async def answer(self, key: ApiKey, image: Image.Image, question: str) -> str:
        self._take(key, ["VisualQuestionAnswering"], 0)
        done = await self._job(key, "VisualQuestionAnswering", {"question": _text(question, "question")}, [image])
        return done.text.strip() or "The model had no answer to that question about this image."

    async def detect(self, key: ApiKey, image: Image.Image, what: str) -> tuple[Image.Image, Done]:
        """``what`` boxed and labelled on a copy of the image, and the boxes as data."""
        self._take(key, ["Text2Box"], 1)
        found = await self._counted(key, 1, self._job(key, "Text2Box", {"prompt": _text(what, "object")}, [image]))
        return draw_boxes(image, found.data.get("boxes", []), found.data.get("labels", [])), found

    async def segment(self, key: ApiKey, image: Image.Image, what: str) -> tuple[Image.Image, str]:
        """The mask of ``what`` (white = the object), and how it was made."""
        what = _text(what, "object")
        models, by = await self._maskers()
        self._take(key, models, 1)
        mask = await self._counted(key, 1, self._object_mask(key, image, what, by))
        return mask, by

    async def remove_background(self, key: ApiKey, image: Image.Image) -> tuple[Image.Image, str]:
        """The main object on a transparent background, and what the model took it to be."""
        models, by = await self._maskers()
        self._take(key, ["VisualQuestionAnswering", *models], 1)

        async def cut() -> tuple[Image.Image, str]:
            subject = (await self._job(key, "VisualQuestionAnswering", {"question": MAIN_OBJECT}, [image])).text
            subject = subject.strip() or "the main object"
            out = image.convert("RGBA")
            out.putalpha(await self._object_mask(key, image, subject, by))
            return out, subject

        return await self._counted(key, 1, cut())

    async def models(self, key: ApiKey | None = None) -> list[ModelInfo]:
        """The pool's models (those ``key`` may use)."""
        try:
            infos = await self.pool.models()
        except Exception as e:  # a Ray front whose replicas are gone
            raise ApiFailure(503, f"The pool cannot list its models right now: {e}", "unavailable") from None
        return [m for m in infos if key is None or key.may_use(m.name)]

    # --- running jobs ------------------------------------------------------------------------

    def _take(self, key: ApiKey, models: list[str], images: int) -> None:
        for m in models:
            if not key.may_use(m):
                raise ApiFailure(403, f"Key {key.name!r} may not use {m}; it may use {', '.join(key.models)}.",
                                 "model_not_allowed")
        try:
            self.keys.take(key, images)
        except OverLimit as e:
            raise ApiFailure(429, str(e), "rate_limit_exceeded", e.retry_after) from None

    async def _counted(self, key: ApiKey, images: int, work: Awaitable[Any]) -> Any:
        """``work``'s result; the images counted for it given back when it fails or is cancelled."""
        try:
            return await work
        except BaseException:
            self.keys.give_back(key, images)
            raise

    async def _draw(self, key: ApiKey, model: str, n: int, job: Callable[[int], tuple[dict, list[Image.Image]]],
                    progress: Progress) -> list[Image.Image]:
        """``n`` jobs of a drawing model, queued together (the pool runs those with the same settings as one
        batch, ``gpu_pool/batching.py``), their images in order; progress counts every step of all of them.
        One failing cancels the others, and the images not made go back to the key's day."""
        self._take(key, [model], n)
        steps = [0] * n

        async def one(i: int) -> list[Image.Image]:
            async def step(s: int, total: int) -> None:
                steps[i] = s
                await progress(sum(steps), n * total, f"{n} image(s): step {min(steps)} of {total}" if n > 1
                               else f"step {s} of {total}")

            params, images = job(i)
            return (await self._job(key, model, params, images, step)).images

        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        try:
            return [im for made in await asyncio.gather(*tasks) for im in made]
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            made = sum(len(t.result()) for t in tasks if not t.cancelled() and t.exception() is None)
            self.keys.give_back(key, n - made)
            raise

    async def _job(self, key: ApiKey, model: str, params: dict[str, Any], images: list[Image.Image],
                   progress: Callable[[int, int], Awaitable[None]] | None = None) -> Done:
        """One pool job to its end. Closing the stream early (cancelled here) cancels the pool job."""
        raw = [RawImage.from_pil(im) for im in images]
        request = JobRequest(model, params, raw, user=f"api:{key.name}")
        async with contextlib.aclosing(self.pool.run(request)) as events:
            async for ev in events:
                if ev.kind == "progress" and ev.total and progress is not None:
                    await progress(ev.step or 0, ev.total)
                elif ev.kind == "failed":
                    raise _failure(ev)
                elif ev.kind == "done":
                    self._judge(key, model, ev)
                    return Done([im.to_pil() for im in ev.images], ev.text or "", ev.data or {})
        raise ApiFailure(503, "The pool ended the job without a result.", "unavailable")

    def _judge(self, key: ApiKey, model: str, ev: Event) -> None:
        """The safety filter, as in chat: a drawn image the checker flagged, or could not check, is withheld."""
        if not self.config.safety.enabled:
            return
        for v in ev.safety or ():
            if v.flagged is False:
                continue
            why = f"{model}, score {v.score:+.3f}" if v.flagged else f"{model}, not checked: {v.note}"
            log.info("api key %s: withheld an image (%s)", key.name, why)
            raise ApiFailure(400, WITHHELD if v.flagged else UNCHECKED, "content_policy_violation")

    # --- masks of objects named in words ------------------------------------------------------

    async def _maskers(self) -> tuple[list[str], str]:
        """The models that will make object masks: GroundingDINO+SAM where both are loaded, else CLIPSeg."""
        ready = {m.name for m in await self.pool.models() if m.state in ("ready", "loading")}
        if set(PRECISE) <= ready:
            return list(PRECISE), "GroundingDINO+SAM"
        if "Text2Mask" in ready:
            return ["Text2Mask"], "CLIPSeg"
        raise ApiFailure(404, "Masking objects needs Text2Box and Segmenting, or Text2Mask, and none of them is "
                              "loaded on this pool.", "model_not_found")

    async def _object_mask(self, key: ApiKey, image: Image.Image, what: str, by: str) -> Image.Image:
        """An "L" mask of ``what`` at the image's size, soft-edged, not grown; 404 when it is not there."""
        if by == "CLIPSeg":
            mask = (await self._job(key, "Text2Mask", {"prompt": what, "soft": True}, [image])).images[0]
        else:
            found = await self._job(key, "Text2Box", {"prompt": what}, [image])
            if not found.data.get("boxes"):
                raise _not_found(what)
            masks = (await self._job(key, "Segmenting", {"boxes": found.data["boxes"]}, [image])).images
            mask = Image.fromarray(np.maximum.reduce([np.asarray(m.convert("L")) for m in masks]), "L")
        mask = mask.convert("L")
        if not (np.asarray(mask) >= 128).any():
            raise _not_found(what)
        return mask


# --- inputs and outputs ------------------------------------------------------------------------


def decode_image(data: bytes | str, what: str, max_pixels: int) -> Image.Image:
    """Uploaded bytes, or base64 text (a data: URL too), as an RGB or RGBA image; 400 saying why not."""
    if isinstance(data, str):
        try:
            data = base64.b64decode(data.partition(",")[2] if data.startswith("data:") else data, validate=True)
        except (binascii.Error, ValueError):
            raise ApiFailure(400, f"{what} is not base64 (send the image's bytes base64-encoded).",
                             "invalid_image") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > max_pixels:
                raise ApiFailure(400, f"{what} is {im.width}x{im.height}; the limit is {max_pixels:,} pixels.",
                                 "invalid_image")
            im.load()
            return im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
    except UnidentifiedImageError:
        raise ApiFailure(400, f"{what} is not an image this server can read (PNG, JPEG, WebP, GIF ...): "
                              f"{len(data)} bytes that no image format recognises.", "invalid_image") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ApiFailure(400, f"{what} could not be decoded as an image: {e}.", "invalid_image") from None


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1)  # a few ms at 512 px (level 6: about 17)
    return buf.getvalue()


def draw_boxes(image: Image.Image, boxes: list[list[float]], labels: list[str]) -> Image.Image:
    """A copy of the image with each box outlined and labelled."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    width = max(1, round(max(out.size) / 256))
    for i, (box, label) in enumerate(zip(boxes, labels)):
        colour = ((255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0))[i % 4]
        draw.rectangle(box, outline=colour, width=width)
        draw.text((box[0] + 2, box[1] + 1), label, fill=colour)
    return out


def _repaint_area(mask: Image.Image) -> Image.Image:
    """OpenAI's mask (transparent = edit) or a black-and-white one (white = edit) as the pool's: white = repaint."""
    if mask.mode == "RGBA" and np.asarray(mask.getchannel("A")).min() < 255:
        return Image.fromarray(((np.asarray(mask.getchannel("A")) < 128) * 255).astype(np.uint8), "L")
    return mask.convert("L")


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ApiFailure(400, f"{name} must be a non-empty string.", "invalid_" + name)
    return value


def _given(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _seeded(params: dict[str, Any], i: int) -> dict[str, Any]:
    """The i-th of n jobs: a seed given makes seed, seed+1, ...; none: the pool picks one per job."""
    return dict(params, seed=params["seed"] + i) if params.get("seed") is not None else params


def _failure(ev: Event) -> ApiFailure:
    code = ev.code or "internal"
    status = STATUS.get(code, 500)
    return ApiFailure(status, ev.message or "The job failed.", "model_not_found" if status == 404 else code)


def _not_found(what: str) -> ApiFailure:
    return ApiFailure(404, f"Could not find {what} in the image; try describing it differently.", "not_found")


def size_of(value: Any, limit: int) -> tuple[int, int] | None:
    """OpenAI's ``size`` ("512x512", "auto" or none) as (width, height); 400 when it is not one."""
    if value in (None, "", "auto"):
        return None
    try:
        w, h = (int(v) for v in str(value).lower().split("x"))
    except ValueError:
        raise ApiFailure(400, f"size must be WIDTHxHEIGHT, e.g. 512x512; got {value!r}.", "invalid_size") from None
    if not (64 <= w <= limit and 64 <= h <= limit):
        raise ApiFailure(400, f"size must be between 64x64 and {limit}x{limit}; got {value}.", "invalid_size")
    return w // 8 * 8, h // 8 * 8

