"""How long jobs take: each model's recent timings, and the ETAs of a device's queue made from them.

The scheduler records every finished job (``Timings.record``); a job's expected time is its model's
recent median time per unit of work (diffusion steps x megapixels; 1 for a job without either), times
its own work. A running job's remaining time comes from its own pace once it has made a step (its
seconds so far over the steps done), else from its model's timings. A queued job is done when the
running job and every job that runs before it are done, plus its own time. A model with no finished
job yet has no estimate, and neither has anything behind it: an honest "no estimate yet" beats a guess.

    timings = Timings()
    timings.record("Text2Image", {"steps": 20, "width": 512, "height": 512}, 4.1)
    timings.estimate("Text2Image", {"steps": 40})            # about 8.2 s
    etas(running, pending, timings, runnable)                 # job id -> seconds until done, or None
                                                              # (running: the job or the batch running)
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from typing import Any

from gpu_pool.protocol import QueuedJob

KEEP = 20  # recent jobs kept per model
MEGAPIXEL = 512 * 512  # a unit of work: one step at 512x512


def _work(steps: Any, width: Any, height: Any) -> float:
    steps = steps if isinstance(steps, int) and steps > 0 else 1
    pixels = width * height / MEGAPIXEL if isinstance(width, int) and isinstance(height, int) else 1.0
    return steps * max(pixels, 1e-3)


class Timings:
    """Each model's last ``KEEP`` jobs: (seconds, steps, width, height)."""

    def __init__(self) -> None:
        self._recent: dict[str, deque[tuple[float, Any, Any, Any]]] = defaultdict(lambda: deque(maxlen=KEEP))

    def record(self, model: str, params: dict[str, Any], seconds: float) -> None:
        """A job of ``model`` with ``params`` (as run, defaults filled) took ``seconds``."""
        self._recent[model].append((seconds, params.get("steps"), params.get("width"), params.get("height")))

    def estimate(self, model: str, params: dict[str, Any]) -> float | None:
        """Seconds a job of ``model`` with ``params`` takes; None before one has finished. A parameter
        the job leaves out (its model's default) counts as the recent jobs' typical value."""
        recent = self._recent.get(model)
        if not recent:
            return None
        rate = statistics.median(s / _work(st, w, h) for s, st, w, h in recent)

        def typical(i: int, key: str) -> Any:
            given = params.get(key)
            return given if given is not None else statistics.median_low([r[i] for r in recent if r[i] is not None]
                                                                        or [None])

        return rate * _work(typical(1, "steps"), typical(2, "width"), typical(3, "height"))

    def remaining(self, model: str, params: dict[str, Any], started: float | None, step: int, total: int,
                  now: float | None = None) -> float | None:
        """Seconds left of a running job: from its own pace once it made a step, else its model's timings."""
        now = time.monotonic() if now is None else now
        if started is not None and step > 0 and total >= step:
            return (now - started) / step * (total - step)
        expected = self.estimate(model, params)
        if expected is None:
            return None
        return max(0.0, expected - (now - started if started is not None else 0.0))


def etas(running: Iterable[Any], pending: Iterable[Any], timings: Timings, runnable: Callable[[Any], bool]
         ) -> dict[str, float | None]:
    """Seconds until each job of one device is done: the running ones (``Job`` with ``started``, ``step``,
    ``total``: one job, or the jobs of a batch, done together) and the pending ones in the order they run
    (a job waiting for its model to load is passed by the runnable ones, and waits for nobody: it gets no
    estimate)."""
    out: dict[str, float | None] = {}
    clock: float | None = 0.0
    for job in running:
        req = job.request
        left = timings.remaining(req.model, req.params, job.started, job.step, job.total)
        clock = None if clock is None or left is None else max(clock, left)
        out[job.id] = left
    for job in pending:
        if not runnable(job):
            out[job.id] = None
            continue
        own = timings.estimate(job.request.model, job.request.params)
        clock = None if clock is None or own is None else clock + own
        out[job.id] = clock
    return out


def bucket(seconds: float | None) -> int | None:
    """An ETA as it is worth re-announcing: 5-second steps under 2 minutes, then whole minutes."""
    if seconds is None:
        return None
    return int(seconds // 5) if seconds < 120 else 24 + int(seconds // 60)


def rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


def listing(device: str, running: list[Any], pending: list[Any], done_in: dict[str, float | None],
            runnable: Callable[[Any], bool]) -> list[QueuedJob]:
    """One device's queue as ``GET /queue`` shows it: the running jobs (one, or a batch), then the queued ones
    in the order they run (a job waiting for its model to load is passed by the runnable ones)."""
    out = [QueuedJob(job.id, job.request.model, device, "running", 0, job.request.user, job.step, job.total,
                     rounded(done_in.get(job.id))) for job in running]
    ahead = len(running)
    for job in pending:
        ready = runnable(job)
        out.append(QueuedJob(job.id, job.request.model, device, "queued" if ready else "loading", ahead,
                             job.request.user, done_in_s=rounded(done_in.get(job.id))))
        ahead += int(ready)
    return out
