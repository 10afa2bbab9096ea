"""Scheduling decisions that CPU-only machines cannot produce with real models:
two devices at once, and a CUDA out-of-memory. The scheduler and registry are
the real ones; only the model is a small stand-in for GPU behaviour."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import torch

import settings
from gpu_pool.models.base import LoadSpec, Output, Param, PoolModel
from gpu_pool.registry import Entry, Registry
from gpu_pool.scheduler import Scheduler
from gpu_pool.protocol import JobRequest


class Stand(PoolModel):
    """Sleeps, or raises what a GPU would raise, on its device's worker thread."""

    params = {"seconds": Param(float, 0.3), "oom": Param(bool, False)}

    def __init__(self, name: str):
        self.name = name
        self.spec = LoadSpec(name, "", "cpu", torch.float32, "")  # no weights: what its provenance says

    def run(self, params, images, progress):
        if params["oom"]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        time.sleep(params["seconds"])
        progress(1, 1)
        return Output(text=threading.current_thread().name)


def registry_with(models: dict[str, str], loaded: bool = True) -> Registry:
    reg = Registry(settings.parse({}, Path("config.toml"), env_check=False))
    loop = asyncio.get_running_loop()
    for name, device in models.items():
        fut = loop.create_future()
        if loaded:
            fut.set_result(Stand(name))
        reg.entries[name] = Entry(name, device, "float16", "", state="ready" if loaded else "loading", ready=fut)
    return reg


async def finish(job) -> list:
    evs = []
    while not evs or evs[-1].kind not in ("done", "failed"):
        evs.append(await asyncio.wait_for(job.events.get(), 10))
    return evs


async def test_jobs_on_different_devices_run_at_the_same_time():
    sched = Scheduler(registry_with({"Image2Canny": "cuda:0", "Image2Hed": "cuda:1"}))
    started = time.perf_counter()
    a = sched.submit(JobRequest("Image2Canny", {"seconds": 0.5}))
    b = sched.submit(JobRequest("Image2Hed", {"seconds": 0.5}))
    ea, eb = await asyncio.gather(finish(a), finish(b))
    elapsed = time.perf_counter() - started
    sched.close()
    assert ea[-1].kind == eb[-1].kind == "done"
    assert ea[-1].text.startswith("run-cuda:0") and eb[-1].text.startswith("run-cuda:1")
    assert elapsed < 0.9  # in parallel, not 1.0 s one after the other
    assert ea[0].position == 0 and eb[0].position == 0  # each first in its own queue


async def test_jobs_on_one_device_run_in_order_without_blocking_the_loop():
    sched = Scheduler(registry_with({"Image2Canny": "cuda:0"}))
    jobs = [sched.submit(JobRequest("Image2Canny", {"seconds": 0.2})) for _ in range(3)]
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    started = time.perf_counter()
    results = await asyncio.gather(*(finish(j) for j in jobs))
    elapsed = time.perf_counter() - started
    ticker.cancel()
    sched.close()
    assert [r[0].position for r in results] == [0, 1, 2]
    assert elapsed >= 0.6
    assert ticks > 30  # the event loop kept running while the models ran


async def test_out_of_memory_fails_the_job_and_the_device_keeps_working():
    sched = Scheduler(registry_with({"Image2Canny": "cuda:0"}))
    bad = await finish(sched.submit(JobRequest("Image2Canny", {"oom": True})))
    good = await finish(sched.submit(JobRequest("Image2Canny", {"seconds": 0.0})))
    sched.close()
    assert bad[-1].code == "too_large"  # run twice, memory freed in between (the core words it for the chat)
    assert bad[-1].message == "Image2Canny ran out of memory on cuda:0 twice, even after freeing what it could."
    assert good[-1].kind == "done"


async def test_a_job_for_a_loading_model_waits_for_it():
    reg = registry_with({"Image2Canny": "cuda:0"}, loaded=False)
    sched = Scheduler(reg)
    job = sched.submit(JobRequest("Image2Canny", {"seconds": 0.0}))
    await asyncio.sleep(0.2)
    assert job.events.qsize() == 2  # queued, then "waiting for the model to load"
    entry = reg.entries["Image2Canny"]
    entry.model, entry.state = Stand("Image2Canny"), "ready"
    entry.ready.set_result(entry.model)
    evs = await finish(job)
    sched.close()
    assert [(e.kind, e.step, e.total) for e in evs] == [
        ("queued", None, None), ("progress", 0, 0), ("progress", 1, 1), ("done", None, None)]


async def test_cancel_a_queued_job():
    sched = Scheduler(registry_with({"Image2Canny": "cuda:0"}))
    first = sched.submit(JobRequest("Image2Canny", {"seconds": 0.3}))
    second = sched.submit(JobRequest("Image2Canny", {"seconds": 0.3}))
    assert sched.cancel(second.id)
    evs = await finish(second)
    assert evs[-1].code == "cancelled"
    assert (await finish(first))[-1].kind == "done"
    sched.close()
