"""Faults on purpose, for tests of what the pool and the bot do when a GPU or a model misbehaves.

Set in the pool's environment (the bot passes its own on to the pool it starts)::

    GPU_POOL_FAULTS="Text2Image:oom=2,Image2Canny:crash_on_load"

- ``NAME:oom=N``: the model's first N jobs raise ``torch.OutOfMemoryError`` at their first step
  inside the model, as CUDA does when a job needs more memory than is free (on a CPU as well);
- ``NAME:crash_on_load``: the pool process is killed (SIGKILL) while that model loads, as a crash
  in native code or the kernel's out-of-memory killer would.

Unset (always, outside tests) nothing here does anything.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import torch

ENV = "GPU_POOL_FAULTS"
log = logging.getLogger(__name__)


def parse(text: str) -> dict[str, dict[str, int]]:
    """``"A:oom=2,B:crash_on_load"`` -> ``{"A": {"oom": 2}, "B": {"crash_on_load": 1}}``."""
    faults: dict[str, dict[str, int]] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, fault = item.partition(":")
        kind, _, count = fault.partition("=")
        if kind not in ("oom", "crash_on_load") or (count and not count.isdigit()):
            raise ValueError(f"{ENV}: cannot read {item!r}; write NAME:oom=N or NAME:crash_on_load")
        faults.setdefault(name, {})[kind] = int(count or 1)
    return faults


def _faults(name: str) -> dict[str, int]:
    return parse(os.environ.get(ENV, "")).get(name, {})


def on_load(name: str) -> None:
    """Called as ``name`` starts loading: the process dies here when asked to."""
    if _faults(name).get("crash_on_load"):
        log.error("%s: crash_on_load: killing the pool (pid %d)", ENV, os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)


def arm(model: Any) -> None:
    """Make a loaded model's first N jobs run out of memory, when asked to."""
    left = _faults(model.name).get("oom", 0)
    if not left:
        return
    run, lock = model.run, threading.Lock()

    def run_out_of_memory(params: dict[str, Any], images: list, progress: Callable[..., None]):
        nonlocal left
        with lock:
            fail, left = left > 0, max(0, left - 1)
        if not fail:
            return run(params, images, progress)

        def step(*args, **kwargs) -> None:
            progress(*args, **kwargs)  # a cancel still wins
            raise torch.OutOfMemoryError(f"CUDA out of memory ({ENV}: {model.name}:oom)")

        run(params, images, step)
        raise torch.OutOfMemoryError(f"CUDA out of memory ({ENV}: {model.name}:oom)")  # a model with no steps

    model.run = run_out_of_memory
    log.warning("%s: the first %d job(s) of %s will run out of memory", ENV, left, model.name)
