"""Jobs: one queue and one worker thread per device.

A job is checked when it arrives (model known and configured, images
decodable and under the pixel limit), queued on its model's device, and run
on that device's thread, so a job on ``cuda:0`` never waits for one on
``cuda:1`` and nothing heavy runs on the event loop. Every step of its life
is an :class:`Event` pushed to the job's own asyncio queue, which
:meth:`Scheduler.stream` yields (the local pool's routes and a Ray replica
both stream jobs through it, and nothing else). A job whose model is still downloading or loading
waits in its queue without holding the device, hearing its model's progress
about once a second.

On a device with a residency budget a job first makes its model resident
(``gpu_pool/residency.py``), and the queue runs jobs whose model is already
resident first, each queued job being passed at most ``max_overtakes`` times.

The images of a drawing model go to the SafetyChecker before the done event,
on the same device thread; the event carries its verdicts (``Event.safety``).

A job that runs out of GPU memory is run once more after the pool frees
what it can, then fails with code ``too_large`` (``gpu_pool/oom.py``).

A job for a model that takes a seed and gave none gets one picked here, so
the done event can say which seed made the image (``Event.provenance``) and a
user can make it again, or another one like it.

Every finished job's time is kept per model (``gpu_pool/timings.py``): queued
and progress events say about how long until the job is done (``done_in_s``),
re-announced when that moves by a few seconds, and ``listing`` is the queue as
``GET /queue`` shows it. A cancelled job stops at its next step; its failed
event says which step that was.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import secrets
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from threading import Event as ThreadFlag

import torch

from gpu_pool import oom
from gpu_pool.models.base import BadRequest, JobCancelled, Output, PoolModel, check_params
from gpu_pool.protocol import CHANNELS, Event, JobRequest, QueuedJob, RawImage, Verdict
from gpu_pool.registry import NotLoaded, Registry, free_memory
from gpu_pool.residency import DoesNotFit, Residency, warm_first
from gpu_pool.timings import Timings, bucket, etas, listing, rounded
from settings import SAFETY_CHECKER

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


class DeviceQueue:
    """Jobs waiting for one device, and the worker that runs them in order.

    A job whose model is still downloading or loading waits in the queue without
    holding the device: jobs behind it for ready models go first, and it hears
    how far its model got (``Scheduler.report_wait``).
    """

    def __init__(self, device: str, scheduler: Scheduler):
        self.device = device
        self.scheduler = scheduler
        self.pending: deque[Job] = deque()
        self.running: Job | None = None
        self._wake = asyncio.Event()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"run-{device}")
        self._task = asyncio.create_task(self._work(), name=f"worker-{device}")

    def put(self, job: Job) -> None:
        self.pending.append(job)
        self._announce_positions()
        self.scheduler.report_wait(job)
        self._wake.set()

    def remove(self, job: Job) -> bool:
        try:
            self.pending.remove(job)
        except ValueError:
            return False
        self._announce_positions()
        return True

    def _announce_positions(self) -> None:
        """Each pending job hears how many jobs will run before it: the running one, and the
        runnable ones ahead of it (a job waiting for its model to load is passed, not waited for)."""
        ahead = int(self.running is not None)
        done_in = self.etas()
        for job in list(self.pending):
            job.announce(ahead, done_in.get(job.id))
            ahead += int(self.scheduler.runnable(job))

    def etas(self) -> dict[str, float | None]:
        """Seconds until each of this device's jobs is done (``gpu_pool/timings.py``)."""
        return etas(self.running, self.pending, self.scheduler.timings, self.scheduler.runnable)

    def listing(self) -> list[QueuedJob]:
        """The running job, then the queued ones in the order they run."""
        return listing(self.device, self.running, list(self.pending), self.etas(), self.scheduler.runnable)

    async def _work(self) -> None:
        while True:
            job = self._take()
            if job is None:  # nothing, or only jobs whose models are still loading
                self._wake.clear()
                for waiting in self.pending:
                    self.scheduler.wake_when_ready(waiting, self._wake)
                await self._wake.wait()
                continue
            self.running = job
            self._announce_positions()
            try:
                await self.scheduler.run(job, self._thread, soon=[j.request.model for j in self.pending])
            except Exception:  # never let one job stop the device
                log.exception("job %s crashed the worker", job.id)
                job.fail("Something went wrong in the image engine.", "internal", traceback.format_exc())
            finally:
                self.running = None

    def _take(self) -> Job | None:
        """The next job whose model is ready: first come, first served; warm first on a device with a budget."""
        registry = self.scheduler.registry
        runnable = [j for j in self.pending if self.scheduler.runnable(j)]
        if not runnable:
            return None
        index = 0
        if registry.manager(self.device) is not None:
            index = warm_first(runnable, lambda j: registry.is_resident(j.request.model),
                               lambda j: j.overtaken, registry.config.residency.max_overtakes)
        for ahead in runnable[:index]:
            ahead.overtaken += 1
        job = runnable[index]
        self.pending.remove(job)
        return job

    def close(self) -> None:
        self._task.cancel()
        self._thread.shutdown(wait=False, cancel_futures=True)


class Scheduler:
    def __init__(self, registry: Registry):
        self.registry = registry
        self.queues: dict[str, DeviceQueue] = {}
        self.jobs: dict[str, Job] = {}
        self.timings = Timings()  # each model's recent jobs, for ETAs
        self._ticker: asyncio.Task | None = None

    @property
    def limits(self) -> dict[str, int]:
        lim = self.registry.config.limits
        return {"max_steps": lim.max_steps, "max_output_size": lim.max_output_size,
                "max_image_pixels": lim.max_image_pixels, "llm_max_tokens": lim.llm_max_tokens}

    async def stream(self, request: JobRequest) -> AsyncIterator[Event]:
        """Submit a job and yield its events until done or failed: the one way a job's events leave the
        scheduler. Closed early (the client left), it cancels the job; either way it forgets the job."""
        job = self.submit(request)
        try:
            while True:
                ev = await job.events.get()
                yield ev
                if ev.kind in ("done", "failed"):
                    return
        finally:
            if not job.finished:  # nobody wants this job any more
                self.cancel(job.id)
                log.info("job %s's client left; cancelled it", job.id)
            self.forget(job)

    def submit(self, request: JobRequest) -> Job:
        """Check and queue a job; a bad one gets its failed event at once (``stream`` is the way to run one)."""
        job = Job(request)
        self.jobs[job.id] = job
        try:
            _check_images(request.images, self.limits["max_image_pixels"])
            job.device = self.registry.device_of(request.model)
        except BadRequest as e:
            job.fail(str(e), "bad_request")
            return job
        except NotLoaded as e:
            job.fail(str(e), e.code)
            return job
        if job.device not in self.queues:
            self.queues[job.device] = DeviceQueue(job.device, self)
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name="load-progress")
        self.queues[job.device].put(job)
        return job

    def cancel(self, job_id: str) -> bool:
        job = self.jobs.get(job_id)
        if job is None or job.finished:
            return False
        job.cancel_flag.set()
        queue = self.queues.get(job.device)
        if queue and queue.remove(job):
            job.cancelled()
        return True

    def listing(self) -> list[QueuedJob]:
        """Every device's jobs now (``GET /queue``)."""
        return [j for q in self.queues.values() for j in q.listing()]

    def forget(self, job: Job) -> None:
        self.jobs.pop(job.id, None)

    async def run(self, job: Job, thread: ThreadPoolExecutor, soon: list[str] = ()) -> None:
        """Run one job on its device's thread and emit its final event; ``soon``: the models
        of the jobs queued behind it, whose weights are evicted last to make room for this one."""
        if job.cancel_flag.is_set():
            return job.cancelled()
        req = job.request
        try:
            model = await self.registry.get(req.model)
            params = check_params(model, req.params, self.limits)
            _check_count(model, req.images)
            if "seed" in model.params and params["seed"] is None:
                params["seed"] = secrets.randbelow(2**32)  # SEED's range; returned in the provenance
        except BadRequest as e:
            return job.fail(str(e), "bad_request")
        except NotLoaded as e:
            return job.fail(str(e), e.code)
        loop = asyncio.get_running_loop()

        def progress(step: int, total: int, text: str | None = None) -> None:
            if job.cancel_flag.is_set():
                raise JobCancelled()
            loop.call_soon_threadsafe(self._stepped, job, step, total, text)

        residency = self.registry.manager(job.device)
        if model.draws:  # the checker runs right after: evict it last
            soon = [*soon, SAFETY_CHECKER]
        wanted = self.registry.modules_of(soon) if residency else []
        job.started = time.monotonic()
        run = functools.partial(_run_sync, model, params, req.images, progress, residency, wanted)
        try:
            out, seconds = await oom.retrying(thread, run, residency, f"{req.model} on {job.device}")
        except BadRequest as e:
            return job.fail(str(e), "bad_request")
        except DoesNotFit as e:
            return job.fail(str(e), "oom")
        except JobCancelled:
            log.info("job %s (%s) cancelled at step %d of %d", job.id, req.model, job.step, job.total)
            return job.cancelled()
        except torch.OutOfMemoryError:  # twice: memory was freed in between (gpu_pool/oom.py)
            return job.fail(f"{req.model} ran out of memory on {job.device} twice, even after freeing what it could.",
                            "too_large")
        except Exception:
            detail = traceback.format_exc()
            log.error("job %s (%s) failed:\n%s", job.id, req.model, detail)
            return job.fail(f"{req.model} failed while running this job; the bot's admins can find the details "
                            "in the pool log.", "internal", detail)
        self.timings.record(req.model, params, seconds)
        safety = await self._check(out.images, thread) if model.draws and out.images else None
        images = [RawImage.from_pil(im) for im in out.images]
        provenance = {"model": req.model, "source": model.source, "params": params, **model.prompts(params)}
        job.emit(Event("done", job.id, text=out.text, images=images, data=out.data, seconds=round(seconds, 6),
                       safety=safety, provenance=provenance))

    async def _check(self, images: list, thread: ThreadPoolExecutor) -> list[Verdict]:
        """The safety checker's verdict on each drawn image. One it could not check says why
        (not loaded, failed), and the core withholds it wherever the policy filters."""
        try:
            checker = await self.registry.get(SAFETY_CHECKER)  # waits while it loads
        except NotLoaded as e:
            return [Verdict(None, note=str(e)) for _ in images]
        residency = self.registry.manager(checker.device)
        try:
            return await asyncio.get_running_loop().run_in_executor(thread, _check_sync, checker, images, residency)
        except Exception as e:
            log.error("the safety checker failed:\n%s", traceback.format_exc())
            if isinstance(e, torch.OutOfMemoryError):
                free_memory()
            return [Verdict(None, note=f"the safety checker failed: {type(e).__name__}: {e}") for _ in images]

    def _stepped(self, job: Job, step: int, total: int, text: str | None) -> None:
        """On the event loop: a running job made a step; it hears when it will be done, the jobs behind it too."""
        job.step, job.total = step, total
        queue = self.queues.get(job.device)
        done_in = queue.etas() if queue is not None else {}
        job.emit(Event("progress", job.id, step=step, total=total, text=text, done_in_s=rounded(done_in.get(job.id))))
        if queue is not None and text is None:  # not for every piece of an LLM's answer
            queue._announce_positions()

    # --- jobs whose model is still downloading or loading ----------------------------------

    def runnable(self, job: Job) -> bool:
        """False while the job's model downloads or loads (unloaded or failed: runnable, to fail with a message)."""
        entry = self.registry.entries.get(job.request.model)
        return entry is None or entry.state != "loading"

    def report_wait(self, job: Job) -> None:
        """Tell a job waiting for its model how far the download or load got (step 0 of 0), when it changed."""
        if self.runnable(job) or job.finished:
            return
        phase, done, total, eta = self.registry.progress(job.request.model)
        now = (phase, done, total, None if eta is None else round(eta))
        if now != job.waited:
            job.waited = now
            job.emit(Event("progress", job.id, step=0, total=0, phase=phase, downloaded=done, download_total=total,
                           eta_s=None if eta is None else round(eta, 1)))

    def wake_when_ready(self, job: Job, wake: asyncio.Event) -> None:
        """Set ``wake`` once the job's model is ready (or failed, or gone): the job can run then."""
        entry = self.registry.entries.get(job.request.model)
        if entry is None or entry.ready.done():
            wake.set()
        else:
            entry.ready.add_done_callback(lambda _: wake.set())

    async def _tick(self) -> None:
        """About once a second: progress for the jobs waiting on a model, and a nudge to the
        workers (a reload replaces the future a worker waits on)."""
        while True:
            await asyncio.sleep(1.0)
            for queue in self.queues.values():
                for job in list(queue.pending):
                    self.report_wait(job)
                if any(self.runnable(j) for j in queue.pending):
                    queue._wake.set()

    def close(self) -> None:
        for q in self.queues.values():
            q.close()
        if self._ticker is not None:
            self._ticker.cancel()


def _run_sync(model: PoolModel, params: dict, images: list[RawImage], progress,
              residency: Residency | None = None, soon: list = ()) -> tuple[Output, float]:
    """Run on the device thread; returns the output and the seconds spent inside the model.

    Under a budget the model's weights are brought onto the device first and stay locked there until it returns.
    """
    pil = [im.to_pil() for im in images]
    on_device = contextlib.nullcontext()
    if residency is not None:
        on_device = residency.use(model.name, model.modules().values(), soon=soon)
    with on_device:
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.run(params, pil, progress)
        return out, time.perf_counter() - started


def _check_sync(checker: PoolModel, images: list, residency: Residency | None) -> list[Verdict]:
    """On a device thread: the checker's weights on its device (under a budget), then its verdicts."""
    on_device = contextlib.nullcontext()
    if residency is not None:
        on_device = residency.use(checker.name, checker.modules().values())
    with on_device:
        return checker.check(images)


def _check_images(images: list[RawImage], max_pixels: int) -> None:
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


def _check_count(model: PoolModel, images: list[RawImage]) -> None:
    if model.n_images is not None and len(images) != model.n_images:
        names = " and ".join(model.image_names) or f"{model.n_images} image(s)"
        need = "no image" if model.n_images == 0 else names
        raise BadRequest(f"{model.name} takes {need}; got {len(images)} image(s).")


