"""Same-model batching: jobs queued for one model with the same settings run as one batch.

A busy server queues several drawings for the same model; one pipeline call for four of them keeps
the GPU busier than four calls one after the other. When a device's worker takes the next job
(``DeviceQueue._take``), the jobs queued behind it for the same model whose settings match
(size, steps, guidance: every param but the model's ``batch_keeps``, e.g. prompt, negative prompt and
seed) join it, up to ``[pool] max_batch``. Each job keeps its own prompt, seed (its own generator, so
its image is the one it would get alone), progress events, safety verdict and result; a job cancelled
while the batch runs gets its cancelled event at the next step and the others go on. A job whose
settings differ, or that takes an image, waits for its own run.

Joining a batch runs a job before the jobs it passes, so it counts as an overtake: a job joins only
while every job it would pass has been overtaken fewer than ``[residency] max_overtakes`` times, as
warm-first scheduling keeps (``gpu_pool/residency.py``), and each job passed counts one overtake.

A batch that runs out of memory twice (``gpu_pool/oom.py``) runs its jobs one at a time instead.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

from gpu_pool.models.base import PoolModel

T = TypeVar("T")


def settings_key(model: PoolModel, params: dict[str, Any]) -> Hashable | None:
    """What must be the same for two of ``model``'s jobs (``params`` checked, defaults filled) to run as
    one batch; None: this model never batches."""
    if not model.batch_keeps:
        return None
    return model.name, tuple(sorted((k, v) for k, v in params.items() if k not in model.batch_keeps))


def gather(runnable: Sequence[T], head: int, key_of: Callable[[T], Hashable | None], max_batch: int,
           overtaken: Callable[[T], int], max_overtakes: int) -> tuple[list[T], list[T]]:
    """The batch led by ``runnable[head]`` (the job picked to run next): it and the jobs behind it with its
    key, in queue order, at most ``max_batch``; and the jobs the batch runs before (each one overtake more).

    A job joins only when every job it would pass was overtaken fewer than ``max_overtakes`` times; the
    first one it may not pass ends the search (every later job would pass it too).
    """
    first = runnable[head]
    batch, last = [first], head
    key = key_of(first) if max_batch > 1 else None
    if key is not None:
        for i in range(head + 1, len(runnable)):
            if len(batch) >= max_batch:
                break
            job = runnable[i]
            if key_of(job) != key:
                continue
            if any(overtaken(j) >= max_overtakes for j in runnable[last + 1:i] if j not in batch):
                break
            batch.append(job)
            last = i
    passed = [j for j in runnable[:last] if j not in batch]
    return batch, passed
