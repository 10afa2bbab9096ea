"""Residency under a budget: exact bytes, LRU eviction, locks, the shared base, warm-first fairness.

The manager and its moving code are the real ones. On this CPU-only machine
the "device" is ``meta`` (weights really move: home CPU -> meta and back) or
``cpu`` with a ``cpu`` home (moves cost nothing; decisions are the same).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import settings
from gpu_pool import accounting
from gpu_pool.models.base import LoadSpec, Output, Param, PoolModel, SharedBases
from gpu_pool.protocol import JobRequest, RawImage
from gpu_pool.registry import Entry, Registry
from gpu_pool.residency import DoesNotFit, Residency, warm_first
from gpu_pool.scheduler import Scheduler
from testkit.pool import start_pool_with, stop_pool
from tests.test_scheduler import finish


def linear(n: int = 100) -> torch.nn.Linear:
    return torch.nn.Linear(n, n)  # float32: 4 * (n*n + n) bytes


def nbytes(*mods: torch.nn.Module) -> int:
    return accounting.unique_bytes(mods)


def on(device: str, mods) -> bool:
    return all(t.device.type == device for m in mods for t in [*m.parameters(), *m.buffers()])


# --- accounting and moves -------------------------------------------------------------


def test_shared_components_and_tied_tensors_are_counted_and_moved_once():
    base_a, base_b = linear(), torch.nn.Sequential(linear(), torch.nn.BatchNorm1d(100))
    tied = torch.nn.Sequential(linear(50), linear(50))
    tied[1].weight = tied[0].weight  # one Parameter held twice
    control = linear(60)
    mgr = Residency("meta", budget=10**7, home="cpu")
    home_ptr = tied[0].weight.data_ptr()

    mgr.make_resident("Canny", [base_a, base_b, control])
    assert mgr.resident_bytes == nbytes(base_a, base_b, control)
    mgr.make_resident("Text2Image", [base_a, base_b])  # the base is there already: a hit, no bytes added
    assert mgr.stats["hits"] == 1 and mgr.resident_bytes == nbytes(base_a, base_b, control)
    mgr.make_resident("Tied", [tied])
    assert mgr.resident_bytes == nbytes(base_a, base_b, control, tied)
    assert nbytes(tied) == 4 * (50 * 50 + 50 + 50)  # the tied weight once
    assert on("meta", [base_a, base_b, control, tied]) and tied[1].weight is tied[0].weight
    assert base_b[1].running_mean.device.type == "meta"  # buffers move too

    mgr.release(mgr._find([tied]))
    mgr.evict([tied])
    assert on("cpu", [tied]) and tied[0].weight.data_ptr() == home_ptr  # back on its home tensor, no copy
    assert mgr.resident_bytes == nbytes(base_a, base_b, control)


def test_least_recently_used_unlocked_component_goes_first():
    a, b, c = linear(), linear(), linear()
    mgr = Residency("meta", budget=2 * nbytes(a) + 100, home="cpu")
    for name, m in [("A", a), ("B", b), ("A", a), ("C", c)]:
        with mgr.use(name, [m]):
            pass
    assert [mgr.is_resident([m]) for m in (a, b, c)] == [True, False, True]  # B was least recently used
    with mgr.use("B", [b]):
        pass
    assert [mgr.is_resident([m]) for m in (a, b, c)] == [False, True, True]  # then A (C ran after it)
    assert mgr.stats["moves_out"] == 2 and mgr.peak_bytes <= mgr.limit
    with mgr.use("A", [a], soon=[c]):  # a queued job needs C: the older C stays, B goes
        pass
    assert [mgr.is_resident([m]) for m in (a, b, c)] == [True, False, True]


def test_a_locked_model_is_never_evicted():
    a, b = linear(), linear()
    mgr = Residency("meta", budget=nbytes(a) + 100, home="cpu")
    running, finish = threading.Event(), threading.Event()

    def slow_job():
        with mgr.use("A", [a]):
            running.set()
            finish.wait(5)

    job = threading.Thread(target=slow_job)
    job.start()
    assert running.wait(5)
    with pytest.raises(TimeoutError, match="no room on meta"):
        mgr.make_resident("B", [b], timeout=0.2)
    assert mgr.is_resident([a]) and on("meta", [a]) and not mgr.is_resident([b])

    waiter = threading.Thread(target=lambda: mgr.release(mgr.make_resident("B", [b])))
    waiter.start()  # waits for the slow job, then gets the room
    time.sleep(0.1)
    assert mgr.is_resident([a]) and waiter.is_alive()
    finish.set()
    job.join(5)
    waiter.join(5)
    assert not waiter.is_alive() and mgr.is_resident([b]) and not mgr.is_resident([a]) and on("cpu", [a])


def test_budget_is_never_exceeded_and_the_count_is_exact_over_many_jobs():
    base = [linear(80), torch.nn.Sequential(linear(40), torch.nn.BatchNorm1d(40))]
    models = {"T2I": base, "Canny": base + [linear(60)], "Pix2Pix": [base[1], linear(90)],
              "Caption": [linear(30)], "Big": [linear(100)]}
    all_mods = {id(m): m for mods in models.values() for m in mods}.values()
    mgr = Residency("meta", budget=nbytes(*models["Canny"]) + nbytes(*models["Caption"]) + 500,
                    reserve=500, home="cpu")
    rng = random.Random(7)
    for _ in range(300):
        name = rng.choice(list(models))
        with mgr.use(name, models[name]):
            assert on("meta", models[name])
            assert mgr.resident_bytes <= mgr.limit
        on_device = [m for m in all_mods if on("meta", [m])]
        assert mgr.resident_bytes == nbytes(*on_device)  # what is really on the device, each tensor once
        assert all(on("cpu", [m]) for m in all_mods if m not in on_device)
    assert mgr.peak_bytes <= mgr.limit < mgr.budget
    assert mgr.stats["jobs"] == 300 and 0 < mgr.stats["hits"] < 300


def test_a_model_larger_than_the_budget_fails_with_what_it_needs():
    big = torch.nn.Module()
    big.w = torch.nn.Parameter(torch.empty(int(2.1 * 2**30), dtype=torch.uint8, device="meta"), requires_grad=False)
    mgr = Residency("cuda:0", budget=int(2.5 * 2**30), reserve=2**30, home="meta")
    with pytest.raises(DoesNotFit) as exc:
        mgr.make_resident("Text2Image", [big])
    assert str(exc.value) == ("Text2Image needs 2.1 GiB on cuda:0 but the budget there is 1.5 GiB "
                              "(2.5 GiB minus a 1 GiB reserve).")
    assert mgr.resident_bytes == 0 and mgr._components[id(big)].locks == 0


# --- the shared base, with the real tiny SD pipelines ---------------------------------


@pytest.fixture(scope="module")
def tiny_sd(tiny_dir):
    from gpu_pool.models import load_sd_base, loader

    bases = SharedBases(load_sd_base)
    folders = {"Text2Image": "sd15", "CannyText2Image": "controlnet-canny", "InstructPix2Pix": "pix2pix",
               "ImageCaptioning": "blip-caption"}
    return {name: loader(name)(LoadSpec(name, str(tiny_dir / f), "cpu", torch.float32, str(tiny_dir / "sd15"),
                                        home="cpu", working_size=64), bases) for name, f in folders.items()}


def test_the_shared_base_stays_while_a_controlnet_pipeline_runs_on_it(tiny_sd):
    t2i, canny, p2p, caption = (tiny_sd[n] for n in ("Text2Image", "CannyText2Image", "InstructPix2Pix",
                                                      "ImageCaptioning"))
    mods = {name: list(m.modules().values()) for name, m in tiny_sd.items()}
    assert canny.pipe.unet is t2i.pipe.unet and p2p.pipe.vae is t2i.pipe.vae  # one base
    # room for the ControlNet pipeline and the caption model, not for pix2pix's own UNet besides
    mgr = Residency("cpu", budget=nbytes(*mods["CannyText2Image"], *mods["ImageCaptioning"]) + 1000, home="cpu")
    mgr.release(mgr.make_resident("ImageCaptioning", mods["ImageCaptioning"]))
    at_step, go_on, result = threading.Event(), threading.Event(), {}

    def progress(step, total):
        at_step.set()
        go_on.wait(10)

    def run_canny():
        with mgr.use("CannyText2Image", mods["CannyText2Image"]):
            params = {"prompt": "a house", "negative_prompt": "", "steps": 2, "guidance": 9.0, "seed": 1}
            result["out"] = canny.run(params, [Image.new("RGB", (64, 64))], progress)

    job = threading.Thread(target=run_canny)
    job.start()
    assert at_step.wait(30)
    with pytest.raises(TimeoutError):
        mgr.make_resident("InstructPix2Pix", mods["InstructPix2Pix"], timeout=0.3)
    assert mgr.is_resident(mods["Text2Image"]) and mgr.is_resident(mods["CannyText2Image"])
    assert mgr.is_resident(mods["ImageCaptioning"])  # not evicted for nothing: it would not have made room
    go_on.set()
    job.join(30)
    assert result["out"].images[0].size == (64, 64)

    with mgr.use("InstructPix2Pix", mods["InstructPix2Pix"]):
        out = p2p.run({"prompt": "make it winter", "steps": 2, "guidance": 7.5, "image_guidance": 1.2, "seed": 1},
                      [Image.new("RGB", (64, 64))], lambda s, t: None)
    assert out.images[0].size == (64, 64)
    assert mgr.is_resident(mods["InstructPix2Pix"]) and not mgr.is_resident(mods["Text2Image"])
    assert mgr.is_resident([t2i.pipe.vae, t2i.pipe.text_encoder])  # the shared parts pix2pix used stayed
    assert not mgr.is_resident(mods["ImageCaptioning"]) and mgr.peak_bytes <= mgr.limit


# --- warm-first scheduling --------------------------------------------------------------


@pytest.mark.parametrize("bound", [0, 1, 3])
def test_warm_first_never_passes_a_job_more_than_the_bound(bound):
    rng = random.Random(bound)
    queue: list[dict] = []
    picked_warm = passed_cold = 0
    for _ in range(2000):
        queue += [{"warm": rng.random() < 0.6, "overtaken": 0} for _ in range(rng.choice([0, 1, 2]))]
        if not queue:
            continue
        i = warm_first(queue, lambda j: j["warm"], lambda j: j["overtaken"], bound)
        for ahead in queue[:i]:
            ahead["overtaken"] += 1
        assert all(j["overtaken"] <= bound for j in queue)
        picked_warm += queue[i]["warm"]
        passed_cold += i > 0
        queue.pop(i)
        for j in queue:
            j["warm"] = rng.random() < 0.6
    assert picked_warm > 0
    assert (passed_cold > 0) == (bound > 0)  # bound 0: first come, first served


class Holder(PoolModel):
    """A stand-in pool model with real modules; records the order jobs ran in."""

    params = {"seconds": Param(float, 0.0)}
    ran: list[str] = []

    def __init__(self, name: str, mods: list[torch.nn.Module]):
        self.name, self._mods = name, mods
        self.spec = LoadSpec(name, "", "cpu", torch.float32, "")  # no weights: what its provenance says

    def modules(self):
        return dict(enumerate(self._mods))

    def run(self, params, images, progress):
        time.sleep(params["seconds"])
        Holder.ran.append(self.name)
        return Output(text=self.name)


def budget_registry(models: dict[str, list], budget: str, max_overtakes: int = 3) -> Registry:
    data = {"residency": {"budget": budget, "reserve": "0", "max_overtakes": max_overtakes, "devices": ["cpu"]}}
    reg = Registry(settings.parse(data, Path("config.toml"), env_check=False))
    loop = asyncio.get_running_loop()
    for name, mods in models.items():
        fut = loop.create_future()
        fut.set_result(Holder(name, mods))
        reg.entries[name] = Entry(name, "cpu", "float32", "", state="ready", model=fut.result(), ready=fut)
    return reg


@pytest.mark.parametrize("bound, order", [
    (2, ["Image2Canny", "Image2Canny", "Image2Canny", "Image2Hed", "Image2Canny"]),
    (0, ["Image2Canny", "Image2Hed", "Image2Canny", "Image2Canny", "Image2Canny"]),
])
async def test_the_pool_scheduler_runs_warm_jobs_first_within_the_bound(bound, order):
    reg = budget_registry({"Image2Canny": [linear()], "Image2Hed": [linear()]}, "64KiB", bound)  # room for one
    sched = Scheduler(reg)
    Holder.ran = []
    first = sched.submit(JobRequest("Image2Canny", {"seconds": 0.3}))
    await asyncio.sleep(0.1)  # running: Image2Canny is resident now
    cold = sched.submit(JobRequest("Image2Hed", {}))
    warm = [sched.submit(JobRequest("Image2Canny", {})) for _ in range(3)]
    results = await asyncio.gather(*(finish(j) for j in [first, cold, *warm]))
    sched.close()
    assert all(r[-1].kind == "done" for r in results)
    assert Holder.ran == order
    assert cold.overtaken == bound


async def test_no_budget_keeps_first_come_first_served():
    reg = budget_registry({"Image2Canny": [linear()], "Image2Hed": [linear()]}, "")
    assert reg.manager("cpu") is None
    sched = Scheduler(reg)
    Holder.ran = []
    jobs = [sched.submit(JobRequest(n, {"seconds": 0.05})) for n in ("Image2Canny", "Image2Hed", "Image2Canny")]
    await asyncio.gather(*(finish(j) for j in jobs))
    sched.close()
    assert Holder.ran == ["Image2Canny", "Image2Hed", "Image2Canny"]


async def test_a_job_whose_model_cannot_fit_fails_with_the_size():
    reg = budget_registry({"Image2Canny": [linear(200)], "Image2Hed": [linear()]}, "64KiB")
    sched = Scheduler(reg)
    evs = await finish(sched.submit(JobRequest("Image2Canny", {}, [])))
    ok = await finish(sched.submit(JobRequest("Image2Hed", {})))
    sched.close()
    assert evs[-1].code == "oom"
    assert evs[-1].message == "Image2Canny needs 157 KiB on cpu but the budget there is 64 KiB."
    assert ok[-1].kind == "done"


def test_the_admin_listing_says_resident_or_offloaded_and_last_use():
    from core.admin import format_models
    from gpu_pool.protocol import ModelInfo

    text = format_models([
        ModelInfo("Text2Image", "cuda:0", "float16", "sd", "ready", 2**31, 2**31, ["CannyText2Image"], None,
                  time.time() - 300, True),
        ModelInfo("InstructPix2Pix", "cuda:0", "float16", "p2p", "ready", 2**31, 2**28, ["Text2Image"]),
        ModelInfo("Image2Depth", "cuda:0", "float16", "dpt", "loading")])
    assert text.splitlines() == [
        "Text2Image: ready on cuda:0 (float16), resident, 2,048 MiB, 2,048 MiB shared with CannyText2Image, "
        "last used 5 min ago",
        "InstructPix2Pix: ready on cuda:0 (float16), offloaded to CPU RAM, 2,048 MiB, 256 MiB shared with Text2Image, "
        "not used yet",
        "Image2Depth: loading on cuda:0 (float16), no weights",
        "Weights shared by several models are held once: 256 MiB less than each loading its own."]


# --- config ---------------------------------------------------------------------------------


def test_sizes_and_their_errors(tmp_path):
    assert [settings.parse_size(v) for v in ("8GiB", "512MiB", "1.5GB", "0", "", "2048", "bad", "8 gib")] == [
        8 * 2**30, 512 * 2**20, 1_500_000_000, 0, 0, 2048, None, 8 * 2**30]
    cfg = settings.parse({"residency": {"budget": "8GiB", "devices": ["cuda"]}}, tmp_path / "c.toml")
    assert (cfg.residency.budget, cfg.residency.reserve, cfg.residency.max_overtakes) == (8 * 2**30, 2**30, 3)
    assert cfg.residency.applies_to("cuda:0") and not cfg.residency.applies_to("cuda:1")
    default = settings.parse({}, tmp_path / "c.toml").residency
    assert default.budget == 0 and not default.applies_to("cuda:0")

    def error(table: dict) -> str:
        with pytest.raises(settings.ConfigError) as exc:
            settings.parse({"residency": table}, tmp_path / "c.toml")
        return str(exc.value)

    assert error({"budget": "8 gigs"}) == ("residency.budget: '8 gigs' is not valid; "
                                           'must be a size like "8GiB", "512MiB" or "1.5GB"')
    assert error({"budget": "1GiB", "reserve": "1GiB"}) == (
        "residency.reserve: '1GiB' is not valid; must be smaller than residency.budget ('1GiB') "
        "so that some of the budget is left for weights")
    assert error({"max_overtakes": -1}).startswith("residency.max_overtakes: -1 is not valid; must be 0 or more")
    assert error({"devices": ["auto"]}).startswith("residency.devices: ['auto'] is not valid; must be a list")


# --- a real pool process with a tiny budget ------------------------------------------------


@pytest.fixture(scope="module")
def budget_pool(tiny_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("budget-pool")
    config = folder / "config.toml"
    models = {"ImageCaptioning": "blip-caption", "Text2Image": "sd15", "CannyText2Image": "controlnet-canny",
              "InstructPix2Pix": "pix2pix"}
    sections = "".join(f'[models.{n}]\ndevice = "cpu"\nsource = "{tiny_dir}/{f}"\n' for n, f in models.items())
    config.write_text(f'[pool]\nsocket = "pool.sock"\nsd_base = "{tiny_dir}/sd15"\n[storage]\ndata_dir = "data"\n'
                      '[residency]\nbudget = "6MiB"\nreserve = "0"\ndevices = ["cpu"]\n' + sections)
    pool = start_pool_with(config)
    yield pool
    stop_pool(pool)


@pytest.mark.slow
async def test_the_pool_lists_resident_and_offloaded_models_under_a_budget(budget_pool):
    client = budget_pool.client()
    img = RawImage.from_pil(Image.new("RGB", (64, 64), (200, 40, 40)))

    async def listing():
        return {m.name: m for m in await client.models()}

    async def run(model, params, images=()):
        return (await client.result(JobRequest(model, params, list(images))))

    try:
        first = await listing()
        assert all(m.state == "ready" and not m.resident and m.last_used is None for m in first.values())
        assert (await run("ImageCaptioning", {}, [img])).kind == "done"
        assert (await run("Text2Image", {"prompt": "a cat", "steps": 2, "width": 64, "height": 64})).kind == "done"
        now = await listing()
        assert now["ImageCaptioning"].resident and now["Text2Image"].resident
        assert not now["InstructPix2Pix"].resident and not now["CannyText2Image"].resident
        assert now["ImageCaptioning"].last_used <= now["Text2Image"].last_used

        # pix2pix's own UNet needs room: the caption model (least recently used), then the base UNet go out
        assert (await run("InstructPix2Pix", {"prompt": "snow", "steps": 2}, [img])).kind == "done"
        now = await listing()
        assert now["InstructPix2Pix"].resident
        assert not now["ImageCaptioning"].resident and not now["Text2Image"].resident
        assert now["Text2Image"].bytes == now["Text2Image"].shared_bytes > 0  # sizes as without a budget
        assert now["InstructPix2Pix"].last_used >= now["Text2Image"].last_used

        too_big = await run("CannyText2Image", {"prompt": "a house", "steps": 2}, [img])
        assert too_big.kind == "failed" and too_big.code == "oom"
        assert too_big.message == "CannyText2Image needs 6.2 MiB on cpu but the budget there is 6 MiB."
        assert (await run("ImageCaptioning", {}, [img])).kind == "done"  # the pool serves on
    finally:
        await client.close()
