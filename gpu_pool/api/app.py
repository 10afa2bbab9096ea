"""The listener: one Starlette app on ``[api] host``:``port``, served by uvicorn inside the pool's event loop.

    /v1/images/*, /v1/models   OpenAI's images API (images.py)
    /mcp                       the MCP server, streamable HTTP (mcp_server.py)
    /health                    {"ok": true}, no key needed

Every request but ``/health`` and a result file needs a known bearer key (401 otherwise, checked
before anything is read, the first request to ``/mcp`` included); a body over ``[api]
max_upload_bytes`` gets 413 with a message (``/mcp`` too: the MCP SDK's own limit is set to it).
Rates and quotas are counted per job, in ``service.py``, so an MCP session's own traffic
(initialize, listings, notifications) costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import settings
from gpu_pool.api import images, mcp_server
from gpu_pool.api.keys import Keys, KeyError_, load_keys
from gpu_pool.api.service import ApiFailure, Jobs, Service

log = logging.getLogger(__name__)
OPEN = ("/health", "/v1/images/files/")  # no key: the health check, and result files (unguessable names)


def make_app(service: Service) -> Starlette:
    api = service.config.api
    mcp = mcp_server.build(service)
    app = mcp.streamable_http_app(streamable_http_path="/mcp", max_request_body_size=api.max_upload_bytes,
                                  host=api.host)
    app.router.routes.extend([*images.routes(service), Route("/health", health)])
    app.add_middleware(Guard, keys=service.keys, max_bytes=api.max_upload_bytes)
    return app


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


class Guard:
    """The key on every request (401), the body's size (413); the key found goes to ``request.state.api_key``."""

    def __init__(self, app: ASGIApp, keys: Keys, max_bytes: int):
        self.app, self.keys, self.max_bytes = app, keys, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(OPEN):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        key = self.keys.find(headers.get("authorization"))
        if key is None:
            why = "No API key: send Authorization: Bearer <key>." if not headers.get("authorization") else \
                "That API key is not valid here."
            return await images.error(ApiFailure(401, why, "invalid_api_key"))(scope, receive, send)
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self.too_large(scope, receive, send)
        scope.setdefault("state", {})["api_key"] = key
        if not scope["path"].startswith("/mcp"):  # a body with no length: counted as it arrives
            receive = self.counting(receive)
        await self.app(scope, receive, send)

    def too_large(self, scope: Scope, receive: Receive, send: Send) -> Any:
        return images.error(self.large())(scope, receive, send)

    def large(self) -> ApiFailure:
        mib = self.max_bytes / 1024 / 1024
        return ApiFailure(413, f"The request is larger than this server accepts ({mib:.1f} MiB, [api] "
                               "max_upload_bytes). Send smaller images, or fewer.", "request_too_large")

    def counting(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise self.large()
            return message

        return counted


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # the pool's own handlers stop it (gpu_pool/__main__.py), not uvicorn's
        yield


class Listener:
    """The listener over the pool that ``pool()`` returns (``backend.Backend``); ``start`` then ``stop``."""

    def __init__(self, config: settings.Config, pool: Callable[[], Jobs]):
        self.config, self.pool = config, pool
        self.server: _Server | None = None
        self.task: asyncio.Task | None = None
        self.port = 0

    async def start(self) -> Listener:
        """Listen; a listener that cannot start (keys unreadable, port taken) is logged, and the pool runs on."""
        api = self.config.api
        try:
            keys = Keys(load_keys(api))
        except KeyError_ as e:
            log.error("[api] listener not started: %s", e)
            return self
        if not keys.keys:
            log.warning("[api] no keys: set %s (name=key,...) or [api] keys_file; every request gets 401",
                        api.keys_env)
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in api.host else socket.AF_INET)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((api.host, api.port))
        except OSError as e:
            log.error("[api] listener not started: cannot listen on %s:%d: %s", api.host, api.port, e)
            return self
        self.port = sock.getsockname()[1]
        app = make_app(Service(self.pool, self.config, keys))
        self.server = _Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2,
                                             access_log=False))
        self.task = asyncio.create_task(self.server.serve(sockets=[sock]), name="api-listener")
        while not self.server.started and not self.task.done():
            await asyncio.sleep(0.01)
        log.info("[api] images API and MCP listening on http://%s:%d (%d key(s))", api.host, self.port,
                 len(keys.keys))
        return self

    async def stop(self) -> None:
        if self.server is None or self.task is None:
            return
        self.server.should_exit = True
        try:
            await asyncio.wait_for(self.task, 5)
        except (TimeoutError, asyncio.CancelledError, Exception):
            self.task.cancel()
