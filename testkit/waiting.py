"""Waiting in tests for what a user would see: ``until`` polls a check until it holds."""

from __future__ import annotations

import asyncio
import time


async def until(predicate, timeout: float = 60.0, every: float = 0.02):
    """Poll ``predicate`` (sync or async) until it is truthy; its value. AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        value = await value if asyncio.iscoroutine(value) else value
        if value:
            return value
        await asyncio.sleep(every)
    raise AssertionError(f"not true within {timeout} s")
