"""OpenAI's images API over the pool: the shapes the ``openai`` package sends and reads.

    POST /v1/images/generations   JSON {prompt, n, size, response_format, model?, seed?, steps?, negative_prompt?}
                                  ─▶ Text2Image (klein's Klein where only it is configured), n jobs: one batch
    POST /v1/images/edits         multipart: image (or image[] 1-4 times), mask?, prompt, n, size, response_format
                                  ─▶ with a mask: Inpainting (transparent or white = repaint), else InstructPix2Pix
                                     (klein's KleinInpaint and Klein); n results per image, image 1's first
    POST /v1/images/variations    multipart: image, n, size, response_format ─▶ Variations (img2img), n jobs
    GET  /v1/models               ◀─ the pool's image models this key may use, and their state
    GET  /v1/images/files/{name}  the PNG behind a response_format="url" result (kept an hour, unguessable name)

Answers: ``{"created", "data": [{"b64_json"} | {"url"}]}``; errors OpenAI's ``{"error": {"message", "type",
"param", "code"}}``: 400 a bad request or an image that is not one (the message says why) or a withheld
drawing (code ``content_policy_violation``), 401 no or a wrong key, 403 a model this key may not use,
404 a model not loaded here, 413 a body over ``[api] max_upload_bytes``, 429 over the key's rate or
daily quota (with ``Retry-After``). ``model`` may be the pool's model for the route or an OpenAI name
(dall-e-2, dall-e-3, gpt-image-1 ...), which means the same. A client that goes away cancels its jobs.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections import OrderedDict
from typing import Any

from PIL import Image
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gpu_pool.api.service import ApiFailure, Service, decode_image, png, size_of

OPENAI_MODELS = ("dall-e", "gpt-image", "chatgpt-image")
ROUTE_MODELS = {"generations": ("Text2Image", "Klein"),
                "edits": ("Inpainting", "InstructPix2Pix", "KleinInpaint", "Klein"), "variations": ("Variations",)}
IMAGE_MODELS = ("Text2Image", "InstructPix2Pix", "Inpainting", "Variations", "Upscale", "Klein", "KleinInpaint")
FILE_TTL_S, MAX_FILES = 3600, 256


def error(e: ApiFailure) -> JSONResponse:
    kind = "invalid_request_error" if e.status < 500 else "server_error"
    headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
    if e.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse({"error": {"message": str(e), "type": kind, "param": None, "code": e.code}}, e.status,
                        headers=headers)


class Files:
    """The PNGs of url results, for an hour, at most MAX_FILES of them (the oldest go first)."""

    def __init__(self) -> None:
        self._files: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def put(self, data: bytes) -> str:
        now = time.monotonic()
        while self._files and (len(self._files) >= MAX_FILES or next(iter(self._files.values()))[0] < now):
            self._files.popitem(last=False)
        name = f"{secrets.token_urlsafe(24)}.png"
        self._files[name] = (now + FILE_TTL_S, data)
        return name

    def get(self, name: str) -> bytes | None:
        entry = self._files.get(name)
        return entry[1] if entry and entry[0] >= time.monotonic() else None


def routes(service: Service) -> list[Route]:
    files = Files()
    limits = service.config.limits

    async def answer(request: Request, images: list[Image.Image], fmt: Any,
                     size: tuple[int, int] | None) -> JSONResponse:
        if size:
            images = [im if im.size == size else im.resize(size, Image.Resampling.LANCZOS) for im in images]
        encoded = await asyncio.get_running_loop().run_in_executor(None, lambda: [png(im) for im in images])
        if fmt == "url":
            base = str(request.base_url).rstrip("/")
            data = [{"url": f"{base}/v1/images/files/{files.put(b)}"} for b in encoded]
        else:
            data = [{"b64_json": base64.b64encode(b).decode()} for b in encoded]
        return JSONResponse({"created": int(time.time()), "data": data})

    async def generations(request: Request) -> Response:
        try:
            body = await request.json()
        except ApiFailure as e:  # over [api] max_upload_bytes
            return error(e)
        except ValueError:
            return error(ApiFailure(400, "The body must be a JSON object.", "invalid_json"))
        if not isinstance(body, dict):
            return error(ApiFailure(400, "The body must be a JSON object.", "invalid_json"))

        async def work() -> Response:
            _route_model(body.get("model"), "generations")
            fmt = _format(body.get("response_format"))
            size = size_of(body.get("size"), limits.max_output_size)
            extra = {k: body.get(k) for k in ("negative_prompt", "steps", "seed", "guidance")}
            images = await service.generate(request.state.api_key, body.get("prompt"), _int(body.get("n", 1), "n"),
                                            size, **extra)
            return await answer(request, images, fmt, None)

        return await _while_connected(request, work())

    async def edits(request: Request) -> Response:
        try:
            form = await _form(request)  # read before _while_connected listens for the client leaving
        except ApiFailure as e:
            return error(e)

        async def work() -> Response:
            images = [_image(f, f"Image {i}") for i, f in enumerate(form.getlist("image[]") + form.getlist("image"), 1)]
            mask = form.get("mask")
            _route_model(form.get("model"), "edits")
            fmt, size = _format(form.get("response_format")), size_of(form.get("size"), limits.max_output_size)
            out = await service.edit(request.state.api_key, await images_of(images), form.get("prompt"),
                                     (await images_of([_image(mask, "The mask")]))[0] if mask is not None else None,
                                     _int(form.get("n", "1"), "n"))
            return await answer(request, out, fmt, size)

        return await _while_connected(request, work())

    async def variations(request: Request) -> Response:
        try:
            form = await _form(request)
        except ApiFailure as e:
            return error(e)

        async def work() -> Response:
            parts = form.getlist("image") + form.getlist("image[]")
            if len(parts) != 1:
                raise ApiFailure(400, f"Send one image to vary; got {len(parts)}.", "invalid_image")
            _route_model(form.get("model"), "variations")
            fmt, size = _format(form.get("response_format")), size_of(form.get("size"), limits.max_output_size)
            image = (await images_of([_image(parts[0], "The image")]))[0]
            out = await service.variations(request.state.api_key, image, _int(form.get("n", "1"), "n"))
            return await answer(request, out, fmt, size)

        return await _while_connected(request, work())

    async def images_of(uploads: list[Any]) -> list[Image.Image]:
        datas = [await u.read() if isinstance(u, UploadFile) else u for u in uploads]
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: [decode_image(d, f"Image {i}", limits.max_image_pixels) for i, d in enumerate(datas, 1)])

    async def models(request: Request) -> Response:
        try:
            infos = await service.models(request.state.api_key)
        except ApiFailure as e:
            return error(e)
        data = [{"id": m.name, "object": "model", "created": 0, "owned_by": "pool", "state": m.state}
                for m in infos if m.name in IMAGE_MODELS]
        return JSONResponse({"object": "list", "data": data})

    async def file(request: Request) -> Response:
        data = files.get(request.path_params["name"])
        if data is None:
            return error(ApiFailure(404, "No such image: results are kept for an hour.", "not_found"))
        return Response(data, media_type="image/png")

    return [Route("/v1/images/generations", generations, methods=["POST"]),
            Route("/v1/images/edits", edits, methods=["POST"]),
            Route("/v1/images/variations", variations, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/images/files/{name}", file, methods=["GET"])]


async def _while_connected(request: Request, work: Any) -> Response:
    """``work``'s answer; cancelled (and with it its pool jobs) when the client goes away first."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():  # the client left (or this handler was cancelled): stop its jobs
            task.cancel()
            await asyncio.wait({task})
    if task.cancelled():
        return Response(status_code=499)
    try:
        return task.result()
    except ApiFailure as e:
        return error(e)


async def _form(request: Request) -> Any:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiFailure(400, "Send the images as multipart/form-data (as the openai package does).", "invalid_body")
    return await request.form(max_files=8, max_fields=32)


def _image(part: Any, what: str) -> Any:
    if not isinstance(part, UploadFile):
        raise ApiFailure(400, f"{what} must be a file part of the form.", "invalid_image")
    return part


def _route_model(model: Any, route: str) -> None:
    if model in (None, "") or (isinstance(model, str) and model.startswith(OPENAI_MODELS)):
        return
    if model not in ROUTE_MODELS[route]:
        raise ApiFailure(404, f"This route draws with {' or '.join(ROUTE_MODELS[route])}; model {model!r} is not one "
                              "of them (an OpenAI model name means the same).", "model_not_found")


def _format(value: Any) -> str:
    if value in (None, "", "b64_json", "url"):
        return value or "b64_json"
    raise ApiFailure(400, f"response_format must be b64_json or url; got {value!r}.", "invalid_response_format")


def _int(value: Any, name: str) -> int:
    try:
        return int(value) if not isinstance(value, bool) else -1
    except (TypeError, ValueError):
        raise ApiFailure(400, f"{name} must be a whole number; got {value!r}.", "invalid_" + name) from None
