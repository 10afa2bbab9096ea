"""A job of the pool: its request, its events, and what runs it on a device's thread.

The scheduler (``gpu_pool/scheduler.py``) queues jobs and runs them; this module is the job itself
(``Job``: its events go to its own asyncio queue, once it is done or failed no more do), the checks of
its input made when it arrives, and the synchronous calls the device's worker thread makes: the model's
run (one job, or a batch of jobs with the same settings, ``gpu_pool/batching.py``) and the safety checker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import traceback
from dataclasses import dataclass, field
from threading import Event as ThreadFlag

import torch

from gpu_pool.models.base import BadRequest, Output, PoolModel
from gpu_pool.protocol import CHANNELS, Event, JobRequest, RawImage, Verdict
from gpu_pool.residency import DoesNotFit, Residency
from gpu_pool.timings import bucket, rounded

log = logging.getLogger(__name__)
_ids = itertools.count(1)


@dataclass
class Job:
    request: JobRequest
    id: str = field(default_factory=lambda: f"j{next(_ids)}")
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel_flag: ThreadFlag = field(default_factory=ThreadFlag)
    device: str = ""
    finished: bool = False
    position: int | None = None  # last position announced
    waited: tuple | None = None  # last download/load progress announced while its model loads
    overtaken: int = 0  # times a later job ran first (warm-first scheduling)
    started: float | None = None  # time.monotonic() when it began to run
    step: int = 0  # steps done of total (progress)
    total: int = 0
    eta: int | None = None  # the ETA bucket last announced

    def announce(self, position: int, done_in_s: float | None = None) -> None:
        """A queued event, only when the position changed or the ETA moved by a few seconds."""
        if position != self.position or bucket(done_in_s) != self.eta:
            self.position, self.eta = position, bucket(done_in_s)
            self.emit(Event("queued", self.id, position=position, done_in_s=rounded(done_in_s)))

    def emit(self, ev: Event) -> None:
        if self.finished:
            return
        self.finished = ev.kind in ("done", "failed")
        self.events.put_nowait(ev)

    def fail(self, message: str, code: str, detail: str | None = None) -> None:
        self.emit(Event("failed", self.id, message=message, code=code, detail=detail))

    def cancelled(self) -> None:
        """The failed event of a cancelled job, with the last step it ran."""
        self.emit(Event("failed", self.id, message="The job was cancelled.", code="cancelled", step=self.step,
                        total=self.total))



def run_sync(model: PoolModel, batch: list[dict], images: list[RawImage], progress,
             residency: Residency | None = None, soon: list = ()) -> tuple[list[Output], float]:
    """Run on the device thread: one job (``batch`` of one params dict) through ``model.run``, or a batch
    of jobs with the same settings through ``model.run_batch``; returns an output per job and the
    seconds spent inside the model.

    Under a budget the model's weights are brought onto the device first and stay locked there until it returns,
    with room for what each job holds besides (``working_bytes``: the LLM's KV cache).
    """
    pil = [im.to_pil() for im in images]
    on_device = contextlib.nullcontext()
    if residency is not None:
        on_device = residency.use(model.name, model.modules().values(), soon=soon,
                                  working=model.working_bytes() * len(batch))
    with on_device:
        started = time.perf_counter()
        with torch.inference_mode():
            outs = model.run_batch(batch, progress) if len(batch) > 1 else [model.run(batch[0], pil, progress)]
        return outs, time.perf_counter() - started


def check_sync(checker: PoolModel, images: list, residency: Residency | None) -> list[Verdict]:
    """On a device thread: the checker's weights on its device (under a budget), then its verdicts."""
    on_device = contextlib.nullcontext()
    if residency is not None:
        on_device = residency.use(checker.name, checker.modules().values())
    with on_device:
        return checker.check(images)


def check_images(images: list[RawImage], max_pixels: int) -> None:
    for i, im in enumerate(images, 1):
        if im.mode not in CHANNELS:
            raise BadRequest(f"Image {i} is not a decodable image: mode {im.mode!r} is not one of "
                             f"{', '.join(CHANNELS)}.")
        if im.width <= 0 or im.height <= 0:
            raise BadRequest(f"Image {i} is not a decodable image: its size is {im.width}x{im.height}.")
        if im.width * im.height > max_pixels:
            raise BadRequest(f"Image {i} is {im.width}x{im.height} = {im.width * im.height:,} pixels; "
                             f"the limit is {max_pixels:,}. Send a smaller image.")
        expected = im.width * im.height * CHANNELS[im.mode]
        if len(im.data) != expected:
            raise BadRequest(f"Image {i} is not a decodable image: {im.width}x{im.height} {im.mode} needs "
                             f"{expected:,} bytes, got {len(im.data):,}.")


def check_count(model: PoolModel, images: list[RawImage]) -> None:
    if model.n_images is not None and len(images) != model.n_images:
        names = " and ".join(model.image_names) or f"{model.n_images} image(s)"
        need = "no image" if model.n_images == 0 else names
        raise BadRequest(f"{model.name} takes {need}; got {len(images)} image(s).")


def cancelled_while_running(job: Job) -> None:
    """On the event loop: a running job was cancelled; it stopped at its last step (a batch goes on without it)."""
    if not job.finished:
        log.info("job %s (%s) cancelled at step %d of %d", job.id, job.request.model, job.step, job.total)
        job.cancelled()


def failure(e: Exception, what: str, job: Job) -> tuple[str, str, str | None]:
    """A failed run's (message, code, detail) for ``job``: what to tell its user, and the cause for the log."""
    name = job.request.model
    if isinstance(e, BadRequest):
        return str(e), "bad_request", None
    if isinstance(e, DoesNotFit):
        return str(e), "oom", None
    if isinstance(e, torch.OutOfMemoryError):  # twice: memory was freed in between (gpu_pool/oom.py)
        return f"{name} ran out of memory on {job.device} twice, even after freeing what it could.", "too_large", None
    detail = traceback.format_exc()
    log.error("job %s (%s) failed:\n%s", job.id, what, detail)
    return (f"{name} failed while running this job; the bot's admins can find the details in the pool log.",
            "internal", detail)
