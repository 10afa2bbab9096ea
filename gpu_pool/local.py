"""The pool in this process: a Registry and a Scheduler behind the ``Backend`` seam (``gpu_pool/backend.py``)."""

from __future__ import annotations

import asyncio
from typing import Any
from collections.abc import AsyncIterator

import settings
from gpu_pool import load_crashes, openai_api
from gpu_pool.backend import Refused, Reloaded
from gpu_pool.load_crashes import LoadCrashes
from gpu_pool.protocol import Event, JobRequest, ModelInfo, QueuedJob
from gpu_pool.registry import Registry
from gpu_pool.scheduler import Scheduler


class LocalPool:
    """Every model in this process; jobs on this process's devices."""

    def __init__(self, config: settings.Config):
        self.crashes = LoadCrashes(config.storage.data_dir / load_crashes.FILE)
        self.crashes.recover()  # models the last pool died loading (gpu_pool/load_crashes.py)
        self.registry = Registry(config, self.crashes)
        self.scheduler = Scheduler(self.registry)
        self._loading: list[asyncio.Task] = []

    def start(self) -> None:
        """Begin loading every configured model (``/health`` answers meanwhile; early jobs wait)."""
        self._loading = self.registry.start_all()

    def close(self) -> None:
        self.crashes.close()  # a clean stop: a load cut short here crashed nothing
        for t in self._loading:
            t.cancel()
        self.scheduler.close()
        self.registry.close()

    @property
    def limits(self) -> settings.LimitsConfig:
        return self.registry.config.limits

    def run(self, request: JobRequest) -> AsyncIterator[Event]:
        return self.scheduler.stream(request)

    async def cancel(self, job_id: str) -> bool:
        return self.scheduler.cancel(job_id)

    async def queue(self) -> list[QueuedJob]:
        return self.scheduler.listing()

    async def models(self) -> list[ModelInfo]:
        return self.registry.infos()

    async def reload(self, name: str | None) -> Reloaded:
        self.crashes.forget(name)  # an admin asks for it again, even one that crashed the pool loading
        try:
            names = await self.registry.reload(name)
        except settings.ConfigError as e:
            raise Refused(str(e), "config") from None
        failed = [n for n in names if (e := self.registry.entries.get(n)) and e.state == "failed"]
        return Reloaded(names, failed)

    async def load(self, name: str, device: str | None, dtype: str | None) -> list[ModelInfo]:
        self.crashes.forget(name)
        e = await self.registry.load(name, device, dtype)
        return [ModelInfo(name, e.device, e.dtype, e.source, e.state, error=e.error)]

    async def unload(self, name: str) -> None:
        await self.registry.unload(name)

    async def llm_info(self) -> ModelInfo | None:
        return self.registry.info(openai_api.MODEL)

    def health(self) -> dict[str, Any]:
        return {}
