"""One turn at a time per conversation, strictly in the order the messages arrived.

``arrive`` is synchronous: an adapter hands a message to the core as its event
comes in, and the place it gets then is its place, however long its downloads
or an earlier turn take.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Place:
    """A message's place in its conversation: wait with ``ready()``, always ``leave()``."""

    def __init__(self, line: InOrder, key: str):
        self._line, self._key = line, key
        self._go = asyncio.get_running_loop().create_future()

    async def ready(self) -> None:
        await asyncio.shield(self._go)  # a cancelled waiter must not spoil the future for leave()

    def leave(self) -> None:
        """Give the conversation to the next message (or drop out of the line while waiting)."""
        self._line._leave(self._key, self)


class InOrder:
    def __init__(self) -> None:
        self._lines: dict[str, deque[Place]] = {}

    def arrive(self, key: str) -> Place:
        place = Place(self, key)
        line = self._lines.setdefault(key, deque())
        line.append(place)
        if len(line) == 1:
            place._go.set_result(None)
        return place

    def _leave(self, key: str, place: Place) -> None:
        line = self._lines.get(key)
        if not line or place not in line:
            return
        first = line[0] is place
        line.remove(place)
        if first and line:
            line[0]._go.set_result(None)
        if not line:
            del self._lines[key]
