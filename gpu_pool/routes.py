"""The pool's HTTP face: every handler, written once against the ``Backend`` (``gpu_pool/backend.py``).

``gpu_pool/server.py`` serves it with the models in its own process
(``gpu_pool/local.py``), ``gpu_pool/ray/front.py`` with Ray Serve replicas;
the bot (``core/pool_client.py``) cannot tell them apart. The job messages
are in ``gpu_pool/protocol.py``; the built-in LLM's OpenAI routes in
``gpu_pool/openai_api.py``. Imports neither torch nor Ray, so the Ray front
stays light.

An admin call answers ``{"ok", "message", "models"}`` (every model's listing
after it); a refusal adds ``"code"`` and ``"model"`` (``backend.Refused``),
so the core can word it for its users.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from aiohttp import web

import settings
from gpu_pool import backend as b
from gpu_pool import openai_api
from gpu_pool.protocol import FrameError, decode_frame, event_to_frame, request_from_frame

log = logging.getLogger(__name__)
MAX_REQUEST = 256 * 1024 * 1024
BACKEND = web.AppKey("backend", b.Backend)


def make_app() -> web.Application:
    """The pool's routes, answered by ``app[BACKEND]`` (set it before the app serves)."""
    app = web.Application(client_max_size=MAX_REQUEST)
    app.router.add_get("/health", health)
    app.router.add_post("/jobs", submit)
    app.router.add_delete("/jobs/{job_id}", cancel)
    app.router.add_get("/queue", queue)
    app.router.add_get("/models", models)
    app.router.add_post("/models/reload", reload)
    app.router.add_post("/models/load", load)
    app.router.add_post("/models/unload", unload)
    openai_api.add_routes(app, BACKEND)  # the built-in LLM, for OpenAI clients
    return app


def site(runner: web.AppRunner, pool: settings.PoolConfig) -> web.BaseSite:
    """Where the pool listens: ``host``:``port``, or its unix socket (a stale one from a pool that died removed)."""
    if pool.host:
        return web.TCPSite(runner, pool.host, pool.port)
    path = Path(pool.socket)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    return web.UnixSite(runner, str(path))


# --- jobs ----------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "pid": os.getpid(), **request.app[BACKEND].health()})


async def submit(request: web.Request) -> web.StreamResponse:
    """Run a job and stream its events until it is done or failed; a client that leaves cancels it."""
    try:
        req = request_from_frame(*decode_frame(await request.read()))
    except FrameError as e:
        return web.json_response({"ok": False, "message": f"Bad job request: {e}"}, status=400)
    async with contextlib.aclosing(request.app[BACKEND].run(req)) as events:  # closing cancels an unfinished job
        first = await anext(events)  # its job id names the stream
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream", "X-Job-Id": first.job_id})
        await resp.prepare(request)
        try:
            await resp.write(event_to_frame(first))
            async for ev in events:
                await resp.write(event_to_frame(ev))
        except ConnectionResetError:  # the client left (a cancelled request that stopped waiting): not an error
            log.info("job %s: its client left before its last event", first.job_id)
            return resp
    await resp.write_eof()
    return resp


async def cancel(request: web.Request) -> web.Response:
    ok = await request.app[BACKEND].cancel(request.match_info["job_id"])
    return web.json_response({"ok": ok, "message": "cancelling" if ok else "no such running job"})


async def queue(request: web.Request) -> web.Response:
    return web.json_response({"jobs": [j.to_json() for j in await request.app[BACKEND].queue()]})


async def models(request: web.Request) -> web.Response:
    return web.json_response({"models": [m.to_json() for m in await request.app[BACKEND].models()]})


# --- admin ---------------------------------------------------------------------


async def reload(request: web.Request) -> web.Response:
    name = (await json_body(request)).get("model")
    try:
        done = await request.app[BACKEND].reload(name)
    except b.Refused as e:
        return await refused(request, e)
    msg = f"Reloaded {', '.join(done.names) or 'nothing'}." + (f" Failed: {', '.join(done.failed)}." if done.failed
                                                                else "")
    return await answer(request, msg, ok=not done.failed)


async def load(request: web.Request) -> web.Response:
    body = await json_body(request)
    name, device, dtype = body.get("model"), body.get("device"), body.get("dtype")
    if problem := load_problem(name, device, dtype):
        return await answer(request, problem, ok=False)
    try:
        listed = await request.app[BACKEND].load(name, device, dtype)
    except b.Refused as e:
        return await refused(request, e)
    if bad := [m for m in listed if m.state != "ready"]:
        return await answer(request, f"{name} could not be loaded: {bad[0].error}", ok=False)
    where = "; ".join(f"{m.device} ({m.dtype})" for m in listed)
    return await answer(request, f"{name} is loaded on {where}.")


async def unload(request: web.Request) -> web.Response:
    name = str((await json_body(request)).get("model"))
    try:
        await request.app[BACKEND].unload(name)
    except b.Refused as e:
        return await refused(request, e)
    return await answer(request, f"{name} is unloaded.")


async def json_body(request: web.Request) -> dict:
    """An admin call's JSON object ({} when there is none); 400 when the body is not JSON."""
    try:
        body = await request.json() if request.can_read_body else {}
    except json.JSONDecodeError:
        raise web.HTTPBadRequest(text="body must be JSON") from None
    return body if isinstance(body, dict) else {}


async def answer(request: web.Request, message: str, ok: bool = True, **extra: Any) -> web.Response:
    """An admin call's answer: the words for the admin and every model's listing after it."""
    infos = [m.to_json() for m in await request.app[BACKEND].models()]
    return web.json_response({"ok": ok, "message": message, "models": infos, **extra}, status=200 if ok else 400)


async def refused(request: web.Request, e: b.Refused) -> web.Response:
    return await answer(request, str(e), ok=False, code=e.code, model=e.model)


def load_problem(name: Any, device: Any, dtype: Any) -> str | None:
    """What is wrong with /models/load's arguments, in words for the admin; None when nothing is."""
    if not isinstance(name, str):
        return "Say which model to load."
    if name not in settings.MODEL_NAMES:
        return str(b.unknown_model(name))
    if device is not None and settings.device_problem(device):
        return f"{device!r} is not a device; use auto, cpu, cuda or cuda:N."
    if dtype is not None and dtype not in settings.DTYPES:
        return f"{dtype!r} is not a dtype; use {', '.join(settings.DTYPES)}."
    return None
