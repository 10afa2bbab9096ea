"""The real pool client, counting what reaches the pool: ``build_core(cfg, pool_client=CountingPool)``.

It talks to the real pool like ``PoolClient`` (benches measure through the same seam) and keeps:
``admin_calls``, the admin requests sent (models, reload, load, unload); per user, the jobs in the pool
now (from their submission until the pool says done or failed) and the most at once (``peak``). With
``hold`` cleared, a finished job's last event waits until it is set, so jobs stay in the pool as long
as a test needs them there (a slow pool, without a slow model).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from core.pool_client import PoolClient
from gpu_pool.protocol import Event, JobRequest, ModelInfo


class CountingPool(PoolClient):
    def __init__(self, url: str):
        super().__init__(url)
        self.admin_calls: list[str] = []
        self.in_pool: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.submitted: list[str] = []  # the users of the jobs, in the order they reached the pool
        self.hold = asyncio.Event()
        self.hold.set()

    async def run(self, request: JobRequest) -> AsyncIterator[Event]:
        user = request.user
        self.submitted.append(user)
        self.in_pool[user] += 1
        self.peak[user] = max(self.peak[user], self.in_pool[user])
        counted = True
        try:
            async for ev in super().run(request):
                if ev.kind in ("done", "failed"):
                    await self.hold.wait()
                    self.in_pool[user] -= 1
                    counted = False
                yield ev
        finally:
            if counted:
                self.in_pool[user] -= 1

    async def models(self) -> list[ModelInfo]:
        self.admin_calls.append("models")
        return await super().models()

    async def reload(self, model: str | None = None) -> dict[str, Any]:
        self.admin_calls.append("reload")
        return await super().reload(model)

    async def load(self, model: str, device: str | None = None, dtype: str | None = None) -> dict[str, Any]:
        self.admin_calls.append("load")
        return await super().load(model, device, dtype)

    async def unload(self, model: str) -> dict[str, Any]:
        self.admin_calls.append("unload")
        return await super().unload(model)


class CancellingPool(CountingPool):
    """CountingPool that, with ``cancel_next`` set, has the pool cancel the next job at its first event (as a
    Cancel button does): its stream ends failed/cancelled, no image made."""

    def __init__(self, url: str):
        super().__init__(url)
        self.cancel_next = False
        self.failed: list[str] = []  # the codes of the jobs that failed ("cancelled" among them)

    async def run(self, request: JobRequest) -> AsyncIterator[Event]:
        cancel, self.cancel_next = self.cancel_next, False
        async for ev in super().run(request):
            if cancel and ev.kind in ("queued", "progress"):
                cancel = False
                assert await self.cancel(ev.job_id)
            if ev.kind == "failed":
                self.failed.append(ev.code)
            yield ev
