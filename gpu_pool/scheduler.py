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

Jobs queued for the same model with the same settings (size, steps, guidance) run as one batch of up to
``[pool] max_batch`` (``gpu_pool/batching.py``); each keeps its own events, seed, verdict and result.

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
import functools
import logging
import secrets
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Hashable
from concurrent.futures import ThreadPoolExecutor

import torch

from gpu_pool import batching, oom
from gpu_pool.jobs import Job, cancelled_while_running, check_count, check_images, check_sync, failure, run_sync
from gpu_pool.models.base import BadRequest, JobCancelled, PoolModel, check_params
from gpu_pool.protocol import Event, JobRequest, QueuedJob, RawImage, Verdict
from gpu_pool.registry import NotLoaded, Registry, free_memory
from gpu_pool.residency import warm_first
from gpu_pool.timings import Timings, etas, listing, rounded
from settings import SAFETY_CHECKER

log = logging.getLogger(__name__)


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
        self.running: list[Job] = []  # the job running, or the jobs of the batch running
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
        """Each pending job hears how many jobs will run before it: the running ones, and the
        runnable ones ahead of it (a job waiting for its model to load is passed, not waited for)."""
        ahead = len(self.running)
        done_in = self.etas()
        for job in list(self.pending):
            job.announce(ahead, done_in.get(job.id))
            ahead += int(self.scheduler.runnable(job))

    def etas(self) -> dict[str, float | None]:
        """Seconds until each of this device's jobs is done (``gpu_pool/timings.py``)."""
        return etas(self.running, self.pending, self.scheduler.timings, self.scheduler.runnable)

    def listing(self) -> list[QueuedJob]:
        """The running jobs, then the queued ones in the order they run."""
        return listing(self.device, self.running, list(self.pending), self.etas(), self.scheduler.runnable)

    async def _work(self) -> None:
        while True:
            jobs = self._take()
            if not jobs:  # nothing, or only jobs whose models are still loading
                self._wake.clear()
                for waiting in self.pending:
                    self.scheduler.wake_when_ready(waiting, self._wake)
                await self._wake.wait()
                continue
            self.running = jobs
            self._announce_positions()
            try:
                await self.scheduler.run(jobs, self._thread, soon=[j.request.model for j in self.pending])
            except Exception:  # never let one job stop the device
                log.exception("jobs %s crashed the worker", ", ".join(j.id for j in jobs))
                for job in jobs:
                    job.fail("Something went wrong in the image engine.", "internal", traceback.format_exc())
            finally:
                self.running = []

    def _take(self) -> list[Job]:
        """The next job whose model is ready (first come, first served; warm first on a device with a budget),
        with the jobs queued behind it that run in one batch with it (``gpu_pool/batching.py``)."""
        registry = self.scheduler.registry
        runnable = [j for j in self.pending if self.scheduler.runnable(j)]
        if not runnable:
            return []
        index = 0
        max_overtakes = registry.config.residency.max_overtakes
        if registry.manager(self.device) is not None:
            index = warm_first(runnable, lambda j: registry.is_resident(j.request.model), lambda j: j.overtaken,
                               max_overtakes)
        batch, passed = batching.gather(runnable, index, self.scheduler.batch_key, registry.config.pool.max_batch,
                                        lambda j: j.overtaken, max_overtakes)
        for ahead in passed:
            ahead.overtaken += 1
        for job in batch:
            self.pending.remove(job)
        return batch

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
            check_images(request.images, self.limits["max_image_pixels"])
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

    def batch_key(self, job: Job) -> Hashable | None:
        """What the jobs run in one batch with ``job`` share (``gpu_pool/batching.py``); None: it runs alone
        (its model not ready or never batched, its params wrong, or it takes images)."""
        entry = self.registry.entries.get(job.request.model)
        if job.request.images or entry is None or entry.state != "ready" or entry.model is None:
            return None
        try:
            return batching.settings_key(entry.model, check_params(entry.model, job.request.params, self.limits))
        except BadRequest:
            return None

    async def run(self, jobs: list[Job], thread: ThreadPoolExecutor, soon: list[str] = ()) -> None:
        """Run a job, or a batch of jobs for one model with the same settings, on their device's thread and emit
        each one's final event; ``soon``: the models of the jobs queued behind, whose weights are evicted last
        to make room for these."""
        for job in [j for j in jobs if j.cancel_flag.is_set()]:  # cancelled before it began
            job.cancelled()
        jobs = [job for job in jobs if not job.finished]
        if not jobs:
            return
        name, device = jobs[0].request.model, jobs[0].device
        try:
            model = await self.registry.get(name)
        except NotLoaded as e:
            for job in jobs:
                job.fail(str(e), e.code)
            return
        batch = [(job, params) for job in jobs if (params := self._params(job, model)) is not None]
        if not batch:
            return
        jobs = [job for job, _ in batch]
        dropped: set[str] = set()  # jobs of the batch cancelled while it runs
        loop = asyncio.get_running_loop()

        def progress(step: int, total: int, text: str | None = None) -> None:
            for job in jobs:
                if job.cancel_flag.is_set() and job.id not in dropped:
                    dropped.add(job.id)
                    # its last step's event is on the loop already
                    loop.call_soon_threadsafe(cancelled_while_running, job)
            if len(dropped) == len(jobs):
                raise JobCancelled()
            loop.call_soon_threadsafe(self._stepped, [j for j in jobs if j.id not in dropped], step, total, text)

        residency = self.registry.manager(device)
        if model.draws:  # the checker runs right after: evict it last
            soon = [*soon, SAFETY_CHECKER]
        wanted = self.registry.modules_of(soon) if residency else []
        for job in jobs:
            job.started = time.monotonic()
        run = functools.partial(run_sync, model, [params for _, params in batch], jobs[0].request.images, progress,
                                residency, wanted)
        what = f"{name} on {device}" + (f" (a batch of {len(jobs)})" if len(jobs) > 1 else "")
        if len(jobs) > 1:
            log.info("jobs %s run %s as one batch of %d", ", ".join(j.id for j in jobs), name, len(jobs))
        try:
            outs, seconds = await oom.retrying(thread, run, residency, what)
        except JobCancelled:  # every job of it was cancelled (each said so as it left)
            for job in jobs:
                cancelled_while_running(job)
            return
        except Exception as e:
            if isinstance(e, torch.OutOfMemoryError) and len(jobs) > 1:  # twice: its jobs run one at a time
                log.warning("%s ran out of memory twice; running its jobs one at a time", what)
                for job in jobs:
                    await self.run([job], thread, soon)
                return
            for job in jobs:
                job.fail(*failure(e, what, job))
            return
        live = [(job, params, out) for (job, params), out in zip(batch, outs) if job.id not in dropped]
        drawn = [im for _, _, out in live for im in out.images] if model.draws else []
        verdicts = await self._check(drawn, thread) if drawn else []
        for job, params, out in live:
            self.timings.record(name, params, seconds / len(batch))  # the time each job of the batch costs
            safety = None
            if drawn:
                safety, verdicts = verdicts[:len(out.images)], verdicts[len(out.images):]
            images = [RawImage.from_pil(im) for im in out.images]
            provenance = {"model": name, "source": model.source, "params": params, **model.prompts(params)}
            job.emit(Event("done", job.id, text=out.text, images=images, data=out.data, seconds=round(seconds, 6),
                           safety=safety, provenance=provenance))

    def _params(self, job: Job, model: PoolModel) -> dict | None:
        """The job's params checked, defaults filled and a seed picked when the model takes one and it gave
        none (so the done event can say which seed made the image); None: the job failed and says why."""
        try:
            params = check_params(model, job.request.params, self.limits)
            check_count(model, job.request.images)
        except BadRequest as e:
            job.fail(str(e), "bad_request")
            return None
        if "seed" in model.params and params["seed"] is None:
            params["seed"] = secrets.randbelow(2**32)  # SEED's range; returned in the provenance
        return params

    async def _check(self, images: list, thread: ThreadPoolExecutor) -> list[Verdict]:
        """The safety checker's verdict on each drawn image. One it could not check says why
        (not loaded, failed), and the core withholds it wherever the policy filters."""
        try:
            checker = await self.registry.get(SAFETY_CHECKER)  # waits while it loads
        except NotLoaded as e:
            return [Verdict(None, note=str(e)) for _ in images]
        residency = self.registry.manager(checker.device)
        try:
            return await asyncio.get_running_loop().run_in_executor(thread, check_sync, checker, images, residency)
        except Exception as e:
            log.error("the safety checker failed:\n%s", traceback.format_exc())
            if isinstance(e, torch.OutOfMemoryError):
                free_memory()
            return [Verdict(None, note=f"the safety checker failed: {type(e).__name__}: {e}") for _ in images]

    def _stepped(self, jobs: list[Job], step: int, total: int, text: str | None) -> None:
        """On the event loop: a running job (or batch) made a step; each hears when it will be done, the jobs
        behind them too."""
        queue = self.queues.get(jobs[0].device)
        for job in jobs:
            job.step, job.total = step, total
        done_in = queue.etas() if queue is not None else {}
        for job in jobs:
            job.emit(Event("progress", job.id, step=step, total=total, text=text,
                           done_in_s=rounded(done_in.get(job.id))))
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
