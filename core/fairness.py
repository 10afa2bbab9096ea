"""Per-user fairness: at most ``limit`` image jobs of one user in the pool at once.

The pool serves everyone first come, first served; the core knows users. A job
beyond its user's cap is not refused: it waits here, in order, and its place is
reported as a ``queued`` event (tools show it as "waiting, N job(s) ahead").
Only pool jobs count, not chat messages, so a "thanks" never waits for a drawing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from gpu_pool.protocol import Event, JobRequest

log = logging.getLogger(__name__)


class UserQueue:
    """Wraps the pool client: ``run`` waits for the user's turn; everything else passes through."""

    def __init__(self, pool: Any, limit: int):
        self.pool, self.limit = pool, limit
        self._running: dict[str, int] = defaultdict(int)
        self._order: dict[str, list[object]] = defaultdict(list)  # waiting jobs, oldest first
        self._changed: dict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)

    def running(self, user: str) -> int:
        return self._running[user]

    async def run(self, request: JobRequest) -> AsyncIterator[Event]:
        """The pool's events for ``request``, after one ``queued`` event per place while it waits."""
        user = request.user or ""
        order, ticket = self._order[user], object()
        order.append(ticket)
        try:
            async for ev in self._wait(user, ticket, request.model):
                yield ev
        finally:
            order.remove(ticket)  # started, or gave up waiting
            self._broadcast(user)
        self._running[user] += 1
        held = True
        try:
            async for ev in self.pool.run(request):
                if ev.kind in ("done", "failed"):  # free the place before the caller moves on
                    held = False
                    self._release(user)
                yield ev
        finally:
            if held:
                self._release(user)

    async def _wait(self, user: str, ticket: object, model: str) -> AsyncIterator[Event]:
        last = None
        while not (self._running[user] < self.limit and self._order[user][0] is ticket):
            ahead = self._running[user] + self._order[user].index(ticket)
            if ahead != last:
                if last is None:
                    log.info("user %s has %d image job(s) in the pool; a %s job waits with %d ahead",
                             user, self._running[user], model, ahead)
                last = ahead
                yield Event("queued", "", position=ahead)
                continue  # look again: places may have moved while the caller showed this one
            await self._changed[user].wait()

    def _release(self, user: str) -> None:
        self._running[user] -= 1
        self._broadcast(user)

    def _broadcast(self, user: str) -> None:
        """Wake every waiter of ``user`` to look at its place again."""
        changed = self._changed.pop(user, None)
        if changed is not None:
            changed.set()
        if not self._running[user] and not self._order[user]:
            self._running.pop(user, None)
            self._order.pop(user, None)
