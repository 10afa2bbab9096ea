"""A job that runs out of GPU memory: free what can be freed, try once more, then fail it as too large.

Out of memory usually means "too much at once right now" (other models' weights on the
device, the allocator's cache, a large image), not a broken model. So the scheduler
frees what no running job holds (under a residency budget, the weights of every model
not running; on every device the allocator's cache), runs the job once more, and only
when that fails too fails the job with code ``too_large`` (the core words it for
the chat, suggesting a smaller size). The device's queue goes on with the next job
either way: the pool never dies of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from gpu_pool.registry import free_memory
from gpu_pool.residency import Residency
from settings.units import memory_size

log = logging.getLogger(__name__)
T = TypeVar("T")


async def retrying(thread: ThreadPoolExecutor, run: Callable[[], T], residency: Residency | None, what: str) -> T:
    """``run()`` on the device's ``thread``; out of memory, free memory and run it once more.
    Out of memory again: memory is freed again (for the next job) and the error raised."""
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(thread, run)
    except torch.OutOfMemoryError as e:
        freed = await loop.run_in_executor(thread, free, residency)
        log.warning("out of memory running %s (%s); freed %s, trying once more", what, _first_line(e), freed)
    try:
        return await loop.run_in_executor(thread, run)
    except torch.OutOfMemoryError as e:
        freed = await loop.run_in_executor(thread, free, residency)
        log.warning("out of memory again running %s (%s); freed %s; the job fails", what, _first_line(e), freed)
        raise


def free(residency: Residency | None) -> str:
    """On the device thread: evict the weights no running job holds, then empty the allocator's cache."""
    evicted = residency.evict_idle() if residency is not None else 0
    free_memory()
    return f"{memory_size(evicted)} of idle weights and the cache" if evicted else "the cache"


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]
