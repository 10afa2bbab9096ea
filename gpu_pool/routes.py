"""What the pool's two HTTP faces share: the routes, JSON bodies, the admin calls' answers and checks.

``gpu_pool/server.py`` serves the routes with the models in its own process,
``gpu_pool/ray/front.py`` with Ray Serve replicas; the bot (``core/pool_client.py``)
cannot tell them apart. Imports neither torch nor Ray, so the Ray front stays light.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import web

import settings

MAX_REQUEST = 256 * 1024 * 1024


def add_routes(app: web.Application, *, health, submit, cancel, models, reload, load, unload) -> None:
    """The pool's routes (``gpu_pool/protocol.py`` for the job messages), the same on both faces."""
    app.router.add_get("/health", health)
    app.router.add_post("/jobs", submit)
    app.router.add_delete("/jobs/{job_id}", cancel)
    app.router.add_get("/models", models)
    app.router.add_post("/models/reload", reload)
    app.router.add_post("/models/load", load)
    app.router.add_post("/models/unload", unload)


def site(runner: web.AppRunner, pool: settings.PoolConfig) -> web.BaseSite:
    """Where the pool listens: ``host``:``port``, or its unix socket (a stale one from a pool that died removed)."""
    if pool.host:
        return web.TCPSite(runner, pool.host, pool.port)
    path = Path(pool.socket)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    return web.UnixSite(runner, str(path))


async def json_body(request: web.Request) -> dict:
    """An admin call's JSON object ({} when there is none); 400 when the body is not JSON."""
    try:
        body = await request.json() if request.can_read_body else {}
    except json.JSONDecodeError:
        raise web.HTTPBadRequest(text="body must be JSON") from None
    return body if isinstance(body, dict) else {}


def admin_reply(message: str, infos: list[dict[str, Any]], ok: bool = True) -> web.Response:
    """An admin call's answer: the words for the admin and every model's listing after it."""
    return web.json_response({"ok": ok, "message": message, "models": infos}, status=200 if ok else 400)


def load_problem(name: Any, device: Any, dtype: Any) -> str | None:
    """What is wrong with /models/load's arguments, in words for the admin; None when nothing is."""
    if not isinstance(name, str):
        return "Say which model to load."
    if device is not None and settings.device_problem(device):
        return f"{device!r} is not a device; use auto, cpu, cuda or cuda:N."
    if dtype is not None and dtype not in settings.DTYPES:
        return f"{dtype!r} is not a dtype; use {', '.join(settings.DTYPES)}."
    return None
