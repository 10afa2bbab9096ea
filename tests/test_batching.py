"""Same-model batching (issue 22): jobs queued for the tiny Text2Image with the same settings run as one
batch, through the real registry, loader, scheduler and safety checker on the CPU. Each job keeps its own
image (byte-identical to its run alone), events, cancel and verdict; other settings wait their turn; the
residency budget and the overtake bound hold."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest
import pytest_asyncio
import torch
from PIL import Image

import settings
from gpu_pool.models.base import Output, Param
from gpu_pool.protocol import JobRequest, RawImage
from gpu_pool.registry import Registry
from gpu_pool.scheduler import Scheduler
from tests.test_residency import Holder, budget_registry, linear

SEEDS = (11, 22, 33, 44)
pytestmark = pytest.mark.asyncio(loop_scope="module")  # the registry's futures live on the module's loop


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def registry(tiny_dir, tmp_path_factory):
    """The tiny Text2Image and the safety checker (the tiny one that flags nothing) on the CPU."""
    folder = tmp_path_factory.mktemp("batching")
    (folder / "config.toml").write_text(f'''[pool]\nsd_base = "{tiny_dir}/sd15"\n[storage]\ndata_dir = "data"
[limits]\nworking_size = 64\n[models.Text2Image]\ndevice = "cpu"\n
[models.SafetyChecker]\ndevice = "cpu"\nsource = "{tiny_dir}/safety-flags-none"\n''')
    reg = Registry(settings.load(folder / "config.toml", env_check=False))
    await reg.load("Text2Image")
    await reg.load("SafetyChecker")
    yield reg
    reg.close()


def scheduler(reg: Registry, max_batch: int) -> Scheduler:
    reg.config = dataclasses.replace(reg.config, pool=dataclasses.replace(reg.config.pool, max_batch=max_batch))
    return Scheduler(reg)


def drawing(seed: int, steps: int = 4, size: int = 64, prompt: str = "") -> JobRequest:
    return JobRequest("Text2Image", {"prompt": prompt or f"a cat number {seed}", "seed": seed, "steps": steps,
                                     "width": size, "height": size})


async def finish(job) -> list:
    """The job's events to its done or failed one (a minute at most: a loaded CI machine is slow)."""
    evs = []
    while not evs or evs[-1].kind not in ("done", "failed"):
        evs.append(await asyncio.wait_for(job.events.get(), 60))
    return evs


async def run_all(sched: Scheduler, requests: list[JobRequest]) -> list[list]:
    """Submit every request at once (queued together, as on a busy server) and wait for each one's events."""
    jobs = [sched.submit(r) for r in requests]
    return await asyncio.gather(*(finish(j) for j in jobs))


async def test_four_queued_jobs_run_as_one_batch_and_each_gets_the_image_it_gets_alone(registry):
    serial = scheduler(registry, 1)
    alone = await run_all(serial, [drawing(s) for s in SEEDS])
    serial.close()
    batched = scheduler(registry, 4)
    together = await run_all(batched, [drawing(s) for s in SEEDS])
    batched.close()
    for one, other in zip(alone, together):
        assert one[-1].kind == other[-1].kind == "done"
        assert one[-1].images[0].data == other[-1].images[0].data  # byte-identical on the CPU
    assert len({evs[-1].images[0].data for evs in together}) == 4  # four seeds, four pictures
    assert len({evs[-1].seconds for evs in together}) == 1  # one run of the model for the four
    assert len({evs[-1].seconds for evs in alone}) == 4
    for seed, evs in zip(SEEDS, together):  # each keeps its own prompt and seed, and hears its own steps
        assert evs[-1].provenance["params"]["seed"] == seed
        assert evs[-1].provenance["prompt"].startswith(f"a cat number {seed}")
        assert [(e.step, e.total) for e in evs if e.kind == "progress"] == [(i, 4) for i in range(1, 5)]
        assert {e.job_id for e in evs} == {evs[-1].job_id}
        assert evs[-1].safety is not None and len(evs[-1].safety) == 1 and evs[-1].safety[0].flagged is False


async def test_the_queue_shows_every_job_of_the_running_batch_as_running(registry):
    sched = scheduler(registry, 4)
    jobs = [sched.submit(drawing(s, steps=15)) for s in SEEDS[:3]]
    later = sched.submit(drawing(5, steps=2, size=128))
    while not jobs[0].step:
        await asyncio.sleep(0.01)
    listing = {q.job_id: q for q in sched.listing()}
    assert [listing[j.id].state for j in jobs] == ["running"] * 3
    assert listing[later.id].state == "queued" and listing[later.id].position == 3
    await asyncio.gather(*(finish(j) for j in [*jobs, later]))
    sched.close()


async def test_a_job_cancelled_in_a_batch_leaves_it_and_the_others_get_their_images(registry):
    alone = scheduler(registry, 1)
    expected = await run_all(alone, [drawing(s, steps=20) for s in SEEDS])
    alone.close()
    sched = scheduler(registry, 4)
    jobs = [sched.submit(drawing(s, steps=20)) for s in SEEDS]
    first = await asyncio.wait_for(jobs[1].events.get(), 30)
    while first.kind != "progress":  # its queued event comes first
        first = await asyncio.wait_for(jobs[1].events.get(), 30)
    assert sched.cancel(jobs[1].id)
    results = await asyncio.gather(*(finish(j) for j in jobs))
    sched.close()
    gone = results[1][-1]
    assert gone.kind == "failed" and gone.code == "cancelled" and gone.step < 20
    for i in (0, 2, 3):
        assert results[i][-1].kind == "done"
        assert results[i][-1].images[0].data == expected[i][-1].images[0].data
        assert results[i][-1].seconds == results[0][-1].seconds  # still one batch
    assert max(e.step for e in results[0] if e.kind == "progress") == 20


async def test_one_job_s_verdict_withholds_its_image_while_the_others_keep_theirs(registry):
    """The checker's thresholds set so that exactly one of the four drawings is flagged; the four run as one
    batch and only that job's done event carries a flagged verdict."""
    sched = scheduler(registry, 1)
    alone = await run_all(sched, [drawing(s) for s in SEEDS])
    sched.close()
    checker = registry.entries["SafetyChecker"].model
    pictures = [evs[-1].images[0].to_pil() for evs in alone]
    from diffusers.pipelines.stable_diffusion.safety_checker import cosine_distance

    with torch.no_grad():
        pixels = checker.processor(images=pictures, return_tensors="pt").pixel_values
        embeds = checker.model.visual_projection(checker.model.vision_model(pixels)[1])
        cos = cosine_distance(embeds, checker.model.concept_embeds)
        special = cosine_distance(embeds, checker.model.special_care_embeds)
        top, second = cos[:, 0].topk(2).values
        flagged = int(cos[:, 0].argmax())
        concept = cos.max(dim=0).values + 0.05
        concept[0] = (top + second) / 2  # only the picture most like concept 0 is over it
        saved = (checker.model.concept_embeds_weights.clone(), checker.model.special_care_embeds_weights.clone())
        checker.model.concept_embeds_weights.copy_(concept)
        checker.model.special_care_embeds_weights.copy_(special.max(dim=0).values + 0.05)
    try:
        sched = scheduler(registry, 4)
        together = await run_all(sched, [drawing(s) for s in SEEDS])
        sched.close()
    finally:
        with torch.no_grad():
            checker.model.concept_embeds_weights.copy_(saved[0])
            checker.model.special_care_embeds_weights.copy_(saved[1])
    assert len({evs[-1].seconds for evs in together}) == 1  # one batch
    assert [evs[-1].safety[0].flagged for evs in together] == [i == flagged for i in range(4)]
    assert all(evs[-1].images for evs in together)  # the pool sends all; the core withholds the flagged one


async def test_a_job_with_another_size_or_steps_waits_for_its_own_run(registry):
    sched = scheduler(registry, 4)
    requests = [drawing(11), drawing(22, size=128), drawing(33), drawing(44, steps=5), drawing(55)]
    results = await run_all(sched, requests)
    sched.close()
    seconds = [evs[-1].seconds for evs in results]
    assert all(evs[-1].kind == "done" for evs in results)
    assert seconds[0] == seconds[2] == seconds[4]  # the three at 64 px and 4 steps: one batch
    assert len({seconds[0], seconds[1], seconds[3]}) == 3  # the others: a run each
    assert results[1][-1].images[0].width == 128 and [e.total for e in results[3] if e.kind == "progress"][-1] == 5


async def test_klein_s_drawings_batch_with_each_its_image_alone_and_an_edit_waits_for_its_own_run(tiny_dir,
                                                                                                   tmp_path):
    """FLUX.2 [klein] on its tiny repo: three drawings from prompts alone run as one batch, each byte-identical
    to its run alone; an edit queued among them (it takes an image) runs on its own."""
    (tmp_path / "config.toml").write_text(f'''[storage]\ndata_dir = "data"\n[limits]\nmax_output_size = 128
[models.Klein]\ndevice = "cpu"\nsource = "{tiny_dir}/klein"\n
[models.SafetyChecker]\ndevice = "cpu"\nsource = "{tiny_dir}/safety-flags-none"\n''')
    reg = Registry(settings.load(tmp_path / "config.toml", env_check=False))
    try:
        await reg.load("Klein")
        await reg.load("SafetyChecker")

        def klein(seed: int) -> JobRequest:
            return JobRequest("Klein", {"prompt": f"a cat number {seed}", "seed": seed, "steps": 3, "width": 64,
                                        "height": 64})

        serial = scheduler(reg, 1)
        alone = await run_all(serial, [klein(s) for s in SEEDS[:3]])
        serial.close()
        grey = RawImage.from_pil(Image.new("RGB", (64, 64), (128, 128, 128)))
        edit = JobRequest("Klein", {"prompt": "make it winter", "seed": 5, "steps": 3}, [grey])
        batched = scheduler(reg, 4)
        together = await run_all(batched, [klein(SEEDS[0]), edit, klein(SEEDS[1]), klein(SEEDS[2])])
        batched.close()
    finally:
        reg.close()
    drawn = [together[0], *together[2:]]
    assert all(evs[-1].kind == "done" for evs in together)
    assert [evs[-1].images[0].data for evs in alone] == [evs[-1].images[0].data for evs in drawn]
    assert len({evs[-1].images[0].data for evs in drawn}) == 3
    assert len({evs[-1].seconds for evs in drawn}) == 1  # one run of the model for the three drawings
    assert together[1][-1].seconds not in {evs[-1].seconds for evs in drawn}  # the edit: a run of its own
    assert [e.step for e in drawn[2] if e.kind == "progress"] == [1, 2, 3]  # each hears the batch's steps


class Batchable(Holder):
    """A stand-in drawing model with real modules that batches; records each run's jobs and the bytes on the
    device while it runs."""

    params = {"prompt": Param(str, "")}
    batch_keeps = ("prompt",)
    manager = None  # the device's Residency, set by the test
    runs: list[tuple[str, int, int]] = []  # (model, jobs, resident bytes)

    def _record(self, n: int) -> None:
        time.sleep(0.05)
        Batchable.runs.append((self.name, n, Batchable.manager.resident_bytes))

    def run(self, params, images, progress):
        self._record(1)
        return Output(text=params["prompt"])

    def run_batch(self, batch, progress):
        self._record(len(batch))
        return [Output(text=p["prompt"]) for p in batch]


@pytest.mark.parametrize("bound, runs", [(0, [("Image2Canny", 1), ("Image2Hed", 1), ("Image2Canny", 4)]),
                                         (1, [("Image2Canny", 4), ("Image2Hed", 1), ("Image2Canny", 1)])])
async def test_batches_keep_the_residency_budget_and_the_overtake_bound(bound, runs):
    """Room for one model's weights. A batch runs only with its model resident, never two models at once;
    a job of the other model is passed by jobs joining a batch only within ``max_overtakes`` (one run, one
    overtake), and a batch holds at most ``max_batch`` (4) jobs."""
    reg = budget_registry({"Image2Canny": [linear()], "Image2Hed": [linear()]}, "64KiB", max_overtakes=bound)
    for name in ("Image2Canny", "Image2Hed"):
        model = Batchable(name, list(reg.entries[name].model.modules().values()))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(model)
        reg.entries[name] = dataclasses.replace(reg.entries[name], model=model, ready=fut)
    Batchable.manager, Batchable.runs = reg.manager("cpu"), []
    sched = Scheduler(reg)
    names = ["Image2Canny", "Image2Hed", "Image2Canny", "Image2Canny", "Image2Canny", "Image2Canny"]
    results = await run_all(sched, [JobRequest(n, {"prompt": f"job {i}"}) for i, n in enumerate(names)])
    sched.close()
    assert [evs[-1].text for evs in results] == [f"job {i}" for i in range(6)]  # each its own result
    one = reg.manager("cpu").bytes_of(reg.entries["Image2Canny"].model.modules().values())
    assert Batchable.runs == [(name, n, one) for name, n in runs]
    assert reg.manager("cpu").peak_bytes <= reg.manager("cpu").limit


def test_the_config_says_how_many_jobs_a_batch_may_hold(tmp_path: Path):
    path = tmp_path / "config.toml"
    path.write_text("[pool]\nmax_batch = 1\n")
    assert settings.load(path, env_check=False).pool.max_batch == 1
    path.write_text("[pool]\nmax_batch = 0\n")
    with pytest.raises(settings.ConfigError, match="pool.max_batch: 0 is not valid; must be between 1 and 16"):
        settings.load(path, env_check=False)
