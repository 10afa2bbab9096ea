"""An OpenAI-compatible chat-completions endpoint for the pool's built-in LLM (``[models.LLM]``).

    POST /v1/chat/completions   an OpenAI chat request ─▶ checked here, one LLM job where the pool runs
                                its jobs (like any job: queue position, residency, cancel)
                                ◀─ the OpenAI answer: JSON, or SSE chunks with "stream": true
    GET  /v1/models             ◀─ the model this pool serves, its state and (once it has answered) its
                                decoding speed, ``tokens_per_s``: fields OpenAI's model object lacks

The core reaches it with the openai package over the pool's socket (``core/local_llm.py``),
exactly as it reaches Ollama or vLLM. Errors have OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``: 400 the request is wrong (the message says
what to fix; an image part sent to a model that cannot see says "cannot see images"), 404 no
``[models.LLM]`` here, 503 the model is loading or failed to load, 500 it failed while answering.
A client that goes away cancels its job, so a dropped request never keeps the device busy.

Where the job runs is the ``Backend``'s business (``gpu_pool/backend.py``): this process's Scheduler
(``local.LocalPool``) or the Ray replicas (``ray.front.Front``). This module only reads requests and
writes answers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import time
from typing import Any
from collections.abc import AsyncIterator

from aiohttp import web
from PIL import Image

from gpu_pool.backend import Backend
from gpu_pool.protocol import Event, JobId, JobRequest, ModelInfo, RawImage

log = logging.getLogger(__name__)
MODEL = "LLM"
ROLES = ("system", "user", "assistant", "tool")
_CODES = {"bad_request": 400, "not_loaded": 503, "load_failed": 503, "unknown_model": 404, "oom": 503,
          "too_large": 503, "cancelled": 499, "internal": 500, "unavailable": 503}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 **extra: Any):
        super().__init__(message)
        self.status, self.param, self.code, self.extra = status, param, code, extra

    def response(self) -> web.Response:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body = {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code, **self.extra}}
        return web.json_response(body, status=self.status)


def add_routes(app: web.Application, backend: web.AppKey) -> None:
    """The two routes, answered with the ``Backend`` at ``app[backend]``."""

    async def completions(request: web.Request) -> web.StreamResponse:
        try:
            return await chat_completions(request, request.app[backend])
        except ApiError as e:
            return e.response()
        except ConnectionResetError:  # the client left; its job is cancelled
            return web.Response(status=499)

    async def models(request: web.Request) -> web.Response:
        info = await request.app[backend].llm_info()
        data = [{"id": info.source, "object": "model", "created": 0, "owned_by": "pool", "state": info.state}
                ] if info else []
        if info and info.tokens_per_s:
            data[0]["tokens_per_s"] = info.tokens_per_s
        return web.json_response({"object": "list", "data": data})

    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/v1/models", models)


async def chat_completions(request: web.Request, backend: Backend) -> web.StreamResponse:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "The body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object.")
    limits = backend.limits
    params, urls = job_params(body, limits.llm_max_tokens)
    source = _ready(await backend.llm_info())
    images = await asyncio.get_running_loop().run_in_executor(None, _decode_images, urls, limits.max_image_pixels)
    job = _Job(request, backend.run(JobRequest(MODEL, params, images, user="openai-api")))
    try:
        first = await job.start()  # its id names the answer
        if first.kind == "failed":  # refused before it ran (e.g. the model went away meanwhile)
            return _failure(first).response()
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await _stream(request, job, source, include_usage)
        return await _answer(job, source)
    finally:
        await job.close()


def _ready(info: ModelInfo | None) -> str:
    """The LLM's source, where it can answer now."""
    if info is None:
        raise ApiError(404, "This pool serves no language model: add a [models.LLM] section to config.toml, "
                            "or set [llm] base_url to an OpenAI-compatible server.", "model", "model_not_found")
    if info.state == "loading":  # how far it got, for a client that waits (the core says so in the chat)
        progress = {"phase": info.phase, "downloaded": info.downloaded, "download_total": info.download_total,
                    "eta_s": info.eta_s}
        raise ApiError(503, "The built-in language model is still loading (the first start downloads it). "
                            "Try again in a minute.", code="model_loading", progress=progress)
    if info.state == "failed":
        raise ApiError(503, f"The built-in language model could not be loaded: {info.error}", code="model_failed")
    return info.source


# --- the request ------------------------------------------------------------


def job_params(body: dict[str, Any], max_tokens_cap: int) -> tuple[dict[str, Any], list[str]]:
    """An OpenAI chat request -> the LLM job's params and the data URLs of its image parts, in order.

    Accepts what standard clients send; unknown keys (user, logprobs, penalties ...) are ignored.
    """
    urls: list[str] = []
    messages = _messages(body.get("messages"), urls)
    tools = _tools(body.get("tools"))
    choice, name = _tool_choice(body.get("tool_choice"), tools)
    requested = body.get("max_completion_tokens", body.get("max_tokens"))
    if requested is not None and (not _is_int(requested) or requested < 1):
        raise ApiError(400, "max_tokens must be a whole number of 1 or more.", "max_tokens")
    params: dict[str, Any] = {
        "messages": messages, "tools": tools, "tool_choice": choice, "tool_name": name,
        "max_tokens": min(requested or max_tokens_cap, max_tokens_cap),  # bounded by [limits] llm_max_tokens
        "parallel_tool_calls": _typed(body, "parallel_tool_calls", bool, True),
    }
    for key, lo, hi in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        value = body.get(key)
        if value is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value <= hi:
                raise ApiError(400, f"{key} must be a number between {lo:g} and {hi:g}.", key)
            params[key] = float(value)
    if body.get("seed") is not None:
        if not _is_int(body["seed"]) or body["seed"] < 0:
            raise ApiError(400, "seed must be a whole number of 0 or more.", "seed")
        params["seed"] = body["seed"]
    if body.get("n", 1) != 1:
        raise ApiError(400, "Only n = 1 is supported.", "n")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, "stop must be a string or a list of strings.", "stop")
    params["stop"] = stop
    fmt = body.get("response_format")
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
            raise ApiError(400, 'response_format must be {"type": "text" | "json_object" | "json_schema", ...}.',
                           "response_format")
        params["response_format"] = fmt
    return params, urls


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _typed(body: dict, key: str, typ: type, default: Any) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, typ):
        raise ApiError(400, f"{key} must be {typ.__name__}.", key)
    return value


def _messages(raw: Any, urls: list[str]) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "messages must be a non-empty list.", "messages")
    out = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object.", where)
        role = "system" if m.get("role") == "developer" else m.get("role")
        if role not in ROLES:
            raise ApiError(400, f"{where}.role must be system, user, assistant or tool.", f"{where}.role")
        msg: dict[str, Any] = {"role": role, "content": _content(m.get("content"), where, urls)}
        if role == "assistant" and m.get("tool_calls"):
            msg["tool_calls"] = [_history_call(tc, f"{where}.tool_calls[{j}]") for j, tc in enumerate(m["tool_calls"])]
        if role == "tool":
            msg["tool_call_id"] = str(m.get("tool_call_id") or "")
        if isinstance(m.get("name"), str):
            msg["name"] = m["name"]
        out.append(msg)
    return out


def _content(content: Any, where: str, urls: list[str]) -> Any:
    """A string; or, when images are in it, parts: {"type": "text", "text"} and {"type": "image"}."""
    if content is None:  # an assistant message with only tool calls
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, f"{where}.content must be a string or a list of parts.", f"{where}.content")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url.startswith("data:image/"):
                raise ApiError(400, f"{where}.content[{j}]: images must be data: URLs (data:image/png;base64,...); "
                                    "this server fetches nothing.", f"{where}.content")
            urls.append(url)
            parts.append({"type": "image"})
        else:
            raise ApiError(400, f"{where}.content[{j}]: only text and image_url parts are supported.",
                           f"{where}.content")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _history_call(tc: Any, where: str) -> dict[str, Any]:
    fn = tc.get("function") if isinstance(tc, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ApiError(400, f"{where} must be {{\"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}.",
                       where)
    args: Any = fn.get("arguments") or "{}"
    if isinstance(args, str):
        try:
            args = json.loads(args)  # templates write arguments with tojson
        except json.JSONDecodeError:
            pass  # a model's malformed call, as it was: the template writes the text
    return {"id": str(tc.get("id") or ""), "type": "function", "function": {"name": fn["name"], "arguments": args}}


def _tools(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ApiError(400, "tools must be a list.", "tools")
    out = []
    for i, t in enumerate(raw):
        fn = t.get("function") if isinstance(t, dict) and t.get("type", "function") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ApiError(400, f'tools[{i}] must be {{"type": "function", "function": {{"name", "parameters"}}}}.',
                           f"tools[{i}]")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise ApiError(400, f"tools[{i}].function.parameters must be a JSON schema object.", f"tools[{i}]")
        out.append({"type": "function", "function": {"name": fn["name"], "description": fn.get("description", ""),
                                                      "parameters": params}})
    return out


def _tool_choice(raw: Any, tools: list[dict]) -> tuple[str, str]:
    """-> ("auto" | "none" | "required", the forced function's name or "")."""
    if raw is None or raw in ("auto", "none", "required"):
        return raw or "auto", ""
    name = (raw.get("function") or {}).get("name") if isinstance(raw, dict) else None
    if not isinstance(name, str):
        raise ApiError(400, 'tool_choice must be "auto", "none", "required" or {"type": "function", "function": '
                            '{"name": ...}}.', "tool_choice")
    if name not in {t["function"]["name"] for t in tools}:
        raise ApiError(400, f"tool_choice names {name!r}, which is not among the tools.", "tool_choice")
    return "required", name


def _decode_images(urls: list[str], max_pixels: int) -> list[RawImage]:
    """Data URLs -> raw pixels (on a thread: decoding takes milliseconds per image)."""
    images = []
    for i, url in enumerate(urls, 1):
        try:
            data = base64.b64decode(url.partition(",")[2], validate=True)
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > max_pixels:
                    raise ApiError(400, f"Image {i} is {im.width}x{im.height}; the limit is {max_pixels:,} pixels.")
                images.append(RawImage.from_pil(im.convert("RGB")))
        except (binascii.Error, OSError, ValueError, Image.DecompressionBombError) as e:
            raise ApiError(400, f"Image {i} is not a decodable base64 image ({type(e).__name__}).") from None
    return images


# --- the answer -------------------------------------------------------------


class _Job:
    """A job's events as the handler reads them: it stops waiting once the client has gone away."""

    def __init__(self, request: web.Request, events: AsyncIterator[Event]):
        self.request, self.events = request, events
        self.id, self.ended = "", False
        self._next: asyncio.Future | None = None  # kept across polls: cancelling it would end the iterator

    async def start(self) -> Event:
        """The first event, which ``next`` then returns again."""
        ev = await self.next()
        self._next = asyncio.get_running_loop().create_future()
        self._next.set_result(ev)
        return ev

    async def next(self) -> Event:
        """The next event; raises ConnectionResetError when the client has gone away meanwhile."""
        self._next = self._next or asyncio.ensure_future(anext(self.events))
        while not (await asyncio.wait({self._next}, timeout=1.0))[0]:
            if self.request.transport is None or self.request.transport.is_closing():
                raise ConnectionResetError("the client closed the connection")
        ev, self._next = self._next.result(), None
        self.id = self.id or JobId.parse(ev.job_id).slug()
        self.ended = ev.kind in ("done", "failed")
        return ev

    async def close(self) -> None:
        """Cancel the job unless it ended."""
        if self._next is not None:
            self._next.cancel()
            await asyncio.wait({self._next})
        await self.events.aclose()
        if not self.ended:
            log.info("chat client left; cancelled job %s", self.id or "(not started)")


def _failure(ev: Event) -> ApiError:
    return ApiError(_CODES.get(ev.code or "", 500), ev.message or "The language model failed.", code=ev.code)


def _calls(job: _Job, answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"id": f"call_{job.id}_{i}", "type": "function", "function": c} for i, c in enumerate(answer["tool_calls"])]


def _usage(answer: dict[str, Any]) -> dict[str, int]:
    p, c = answer["prompt_tokens"], answer["completion_tokens"]
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


async def _answer(job: _Job, source: str) -> web.Response:
    while (ev := await job.next()).kind not in ("done", "failed"):
        pass
    if ev.kind == "failed":
        return _failure(ev).response()
    answer = json.loads(ev.text or "{}")
    message: dict[str, Any] = {"role": "assistant", "content": answer["content"]}
    if answer["tool_calls"]:
        message["tool_calls"] = _calls(job, answer)
    return web.json_response({
        "id": f"chatcmpl-{job.id}", "object": "chat.completion", "created": int(time.time()), "model": source,
        "choices": [{"index": 0, "message": message, "finish_reason": answer["finish_reason"], "logprobs": None}],
        "usage": _usage(answer)})


async def _stream(request: web.Request, job: _Job, source: str, include_usage: bool) -> web.StreamResponse:
    """Server-sent events as OpenAI streams them: a role chunk, content deltas, tool calls, the finish, [DONE]."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    head = {"id": f"chatcmpl-{job.id}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": source}

    async def send(delta: dict | None, finish: str | None = None, **extra: Any) -> None:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
        await resp.write(f"data: {json.dumps({**head, 'choices': choices, **extra})}\n\n".encode())

    await send({"role": "assistant", "content": ""})
    streamed = ""
    while True:
        ev = await job.next()
        if ev.kind == "progress" and ev.text:
            streamed += ev.text
            await send({"content": ev.text})
        elif ev.kind == "queued":
            await resp.write(f": queued, {ev.position} job(s) ahead\n\n".encode())  # an SSE comment
        elif ev.kind == "failed":
            err = _failure(ev)
            await resp.write(f"data: {json.dumps({'error': {'message': str(err), 'code': ev.code}})}\n\n".encode())
            break
        elif ev.kind == "done":
            answer = json.loads(ev.text or "{}")
            content = answer["content"] or ""
            if content.startswith(streamed) and content != streamed:
                await send({"content": content[len(streamed):]})
            for i, call in enumerate(_calls(job, answer)):
                await send({"tool_calls": [{"index": i, **call}]})
            await send({}, answer["finish_reason"])
            if include_usage:
                await send(None, usage=_usage(answer))
            break
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp
