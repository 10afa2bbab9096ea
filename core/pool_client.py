"""The core's side of the pool protocol (see ``gpu_pool/protocol.py``).

Never raises for a job: a pool that is down or dies mid-job yields a final
``failed`` event with code ``unavailable`` and a message for the chat user.

The pool's words name models and causes, never a chat command; where a model
is not loaded (code ``not_loaded``, on a job or an admin call) the words here
tell the chat user how an admin loads it; where a job ran out of GPU memory
twice (code ``too_large``) they suggest a smaller size (core/errors.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from collections.abc import AsyncIterator

import aiohttp

from core.errors import too_large
from gpu_pool.protocol import (UNAVAILABLE, Event, JobRequest, ModelInfo, QueuedJob, event_from_frame, read_frame,
                               request_to_frame)

log = logging.getLogger(__name__)


def not_loaded(model: str) -> str:
    """What a chat user reads when ``model`` is not loaded on the pool."""
    return f"{model} is not loaded on this bot; an admin can load it with /load {model}."


class PoolUnavailable(Exception):
    """The pool could not be reached (admin calls)."""


class PoolClient:
    def __init__(self, url: str):
        """``url`` is ``unix:/path/to/pool.sock`` or ``http://host:port``."""
        self.url = url
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if self.url.startswith("unix:"):
                connector = aiohttp.UnixConnector(path=self.url[len("unix:"):])
                self._base = "http://pool"
            else:
                connector = aiohttp.TCPConnector()
                self._base = self.url.rstrip("/")
            self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def run(self, request: JobRequest) -> AsyncIterator[Event]:
        """Submit a job and yield its events; the last one is ``done`` or ``failed``."""
        job_id = ""
        try:
            async with self._http().post(f"{self._base}/jobs", data=request_to_frame(request)) as resp:
                if resp.status != 200:
                    body = await resp.json(content_type=None)
                    yield Event("failed", "", message=body.get("message", "The job was refused."), code="bad_request")
                    return
                job_id = resp.headers.get("X-Job-Id", "")
                while (frame := await read_frame(resp.content)) is not None:
                    ev = event_from_frame(*frame)
                    if ev.code == "not_loaded":
                        ev.message = not_loaded(request.model)
                    elif ev.code == "too_large":
                        log.warning("job %s: %s", job_id, ev.message)
                        ev.message = _too_large(request)
                    yield ev
                    if ev.kind in ("done", "failed"):
                        return
        except (aiohttp.ClientError, asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            log.warning("pool connection lost during job %s: %r", job_id or "(not started)", e)
        yield Event("failed", job_id, message=UNAVAILABLE, code="unavailable")

    async def result(self, request: JobRequest) -> Event:
        """Run a job to its end, ignoring intermediate events."""
        last = None
        async for event in self.run(request):
            last = event
        return last

    async def cancel(self, job_id: str) -> bool:
        return bool((await self._call("DELETE", f"/jobs/{job_id}")).get("ok"))

    async def health(self) -> bool:
        try:
            return bool((await self._call("GET", "/health")).get("ok"))
        except PoolUnavailable:
            return False

    async def queue(self) -> list[QueuedJob]:
        """The jobs in the pool now, per device the running one first (raises PoolUnavailable)."""
        return [QueuedJob(**j) for j in (await self._call("GET", "/queue"))["jobs"]]

    async def models(self) -> list[ModelInfo]:
        return [ModelInfo.from_json(m) for m in (await self._call("GET", "/models"))["models"]]

    async def reload(self, model: str | None = None) -> dict[str, Any]:
        return _worded(await self._call("POST", "/models/reload", {"model": model}))

    async def load(self, model: str, device: str | None = None, dtype: str | None = None) -> dict[str, Any]:
        return _worded(await self._call("POST", "/models/load", {"model": model, "device": device, "dtype": dtype}))

    async def unload(self, model: str) -> dict[str, Any]:
        return _worded(await self._call("POST", "/models/unload", {"model": model}))

    async def _call(self, method: str, path: str, body: dict | None = None) -> dict[str, Any]:
        try:
            async with self._http().request(method, f"{self._base}{path}", json=body) as resp:
                return await resp.json(content_type=None)
        except (aiohttp.ClientError, ConnectionError, OSError) as e:
            raise PoolUnavailable(UNAVAILABLE) from e


def _too_large(request: JobRequest) -> str:
    """The words for a job that ran out of GPU memory twice: the size it asked for, else its first image's."""
    width, height = request.params.get("width"), request.params.get("height")
    if isinstance(width, int) and isinstance(height, int):
        return too_large(width, height, drawn=True)
    if request.images:
        return too_large(request.images[0].width, request.images[0].height, drawn=False)
    return too_large(None, None, drawn=False)


def _worded(reply: dict[str, Any]) -> dict[str, Any]:
    """An admin call's answer, its message worded for the chat where the pool refused for a model not loaded."""
    if reply.get("code") == "not_loaded" and reply.get("model"):
        reply["message"] = not_loaded(reply["model"])
    return reply
