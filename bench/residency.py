"""The whole seed tool set on one 8 GiB GPU: a skewed trace through the pool's residency manager.

Builds every seed tool at real size with bench/memory.py's builders (random
weights on the ``meta`` device: fp16, the controlnet_aux nets fp32 as the pool
runs them), shared as the pool shares them (one SD1.5 base), all placed on
one device with an 8 GiB budget and a 1 GiB reserve. Then replays a trace of
jobs through the pool's own code: ``warm_first`` picks the next job as a
device queue does, ``Residency.use`` makes its model resident as the device
thread does. On meta the moves cost nothing; every decision and byte counted
is what a GPU would get.

The trace models how the bot is used: sessions, three at a time,
interleaved. A session is one workflow, drawn Zipf-skewed (s=1.2) over the
17 workflows the bot's tools and buttons make, most popular first (chat about
an uploaded image, generate, edit, canny, ..., a drawing's Variations and
Upscale buttons); image workflows start with the caption the bot makes of
every upload; condition workflows make the map once and then generate from
it; the last step is repeated (users iterate on a result: 1 + geometric, 3
times on average). 1000 jobs, every tool at least once. Every drawing job is
followed by the SafetyChecker on the same device, as the pool runs it (its
weights are evicted last while the drawing runs); hit rates count its uses
too. Jobs arrive in bursts (Poisson, one job served per tick), so a queue
forms: warm-first has something to choose from, and the weights of queued
jobs are evicted last. FIFO (max_overtakes=0) replays the same trace.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/residency.py [--no-cuda] [--smoke]

``--smoke``: 200 jobs, no sensitivity runs, no GPU copies (the same code, in seconds).

With a CUDA GPU it also materializes a ControlNet and a UNet (pinned CPU
memory) and times bringing each onto the GPU (p50 of 20, non_blocking copies,
synchronized). Ends with ``peak_resident_mib=<float>`` and ``budget_mib=<float>``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import warnings
from collections import Counter, deque

import torch

from bench import memory
from gpu_pool.accounting import unique_bytes
from gpu_pool.residency import Residency, warm_first
from settings import SAFETY_CHECKER

MIB, GIB = 2**20, 2**30
BUDGET, RESERVE, MAX_OVERTAKES = 8 * GIB, 1 * GIB, 3
JOBS, ZIPF_S, MEAN_REPEATS, USERS, SEED = 1000, 1.2, 3, 3, 1
# (steps done once, step repeated), most used first. Image workflows start with the upload's caption.
WORKFLOWS = [([], "ImageCaptioning"), ([], "Text2Image"), (["ImageCaptioning"], "InstructPix2Pix"),
             (["ImageCaptioning", "Image2Canny"], "CannyText2Image"), (["ImageCaptioning"], "VisualQuestionAnswering"),
             (["ImageCaptioning", "Text2Mask"], "Inpainting")]
WORKFLOWS += [(["ImageCaptioning", f"Image2{c}"], f"{c}Text2Image")
              for c in ("Pose", "Depth", "Scribble", "Seg", "Hed", "Line", "Normal")]
WORKFLOWS += [(["ImageCaptioning"], "Text2Box"),  # detect objects; remove one with GroundingDINO + SAM masks
              (["ImageCaptioning", "Text2Box", "Segmenting"], "Inpainting")]
WORKFLOWS += [(["Text2Image"], button) for button in memory.BUTTONS]  # the buttons under a drawing
POPULARITY = list(dict.fromkeys(step for first, repeated in WORKFLOWS for step in [*first, repeated]))
# The models whose images the pool's SafetyChecker looks at before they leave (gpu_pool/models/sd.py: draws)
DRAWS = {"Text2Image", "InstructPix2Pix", "Inpainting", *memory.CONTROLNET_TOOLS, *memory.BUTTONS}
FIGURES = ("peak_resident_mib", "budget_mib", "warm_first_hit_rate")
FP32_ANNOTATORS = {"Image2Line", "Image2Hed", "Image2Scribble", "Image2Pose"}  # controlnet_aux runs them in fp32


def build_tools() -> dict[str, list[torch.nn.Module]]:
    """Every seed tool's modules at real size on meta, the SD family on one shared base."""
    with memory.fp16_on("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pool = memory.pool_placement()
        tools = pool | memory.annotators() | memory.button_models(pool)
    for name in FP32_ANNOTATORS:
        tools[name] = [m.float() for m in tools[name]]
    assert sorted(tools) == sorted([*POPULARITY, SAFETY_CHECKER]), sorted(tools)
    return tools


def make_trace(rng: random.Random, s: float = ZIPF_S, jobs: int = JOBS) -> list[str]:
    """Sessions of ``USERS`` users interleaved; see the module docstring."""
    weights = [1 / rank**s for rank in range(1, len(WORKFLOWS) + 1)]

    def session() -> list[str]:
        first, repeated = rng.choices(WORKFLOWS, weights)[0]
        repeats = 1
        while rng.random() > 1 / MEAN_REPEATS:
            repeats += 1
        return [*first, *[repeated] * repeats]

    active, trace = [session() for _ in range(USERS)], []
    while len(trace) < jobs:
        user = rng.randrange(USERS)
        trace.append(active[user].pop(0))
        active[user] = active[user] or session()
    for name in set(POPULARITY) - set(trace):  # every tool at least once
        trace.insert(rng.randrange(len(trace)), name)
    return trace


def replay(tools: dict, trace: list[str], max_overtakes: int, seed: int, budget: int = BUDGET, reserve: int = RESERVE,
           draws: set[str] = DRAWS) -> tuple[Residency, Counter, int]:
    """Serve ``trace`` as a device queue would, each drawing (``draws``) checked by the SafetyChecker after it;
    returns the manager, hits per tool, the most overtakes seen."""
    mgr = Residency("meta", budget, reserve, home="meta")
    rng, arrivals, queue = random.Random(seed), deque(trace), []
    hits: Counter = Counter()
    most = 0
    while arrivals or queue:
        for _ in range(_poisson(rng, 1.0)):  # bursts: a queue forms, then drains
            if arrivals:
                queue.append({"model": arrivals.popleft(), "overtaken": 0})
        if not queue:
            continue
        i = warm_first(queue, lambda j: mgr.is_resident(tools[j["model"]]), lambda j: j["overtaken"], max_overtakes)
        for ahead in queue[:i]:
            ahead["overtaken"] += 1
        job = queue.pop(i)
        most = max([most] + [j["overtaken"] for j in queue])
        soon = [m for j in queue for m in tools[j["model"]]]
        steps = [job["model"], SAFETY_CHECKER] if job["model"] in draws else [job["model"]]
        for i, name in enumerate(steps):
            before = mgr.stats["hits"]
            later = [m for n in steps[i + 1:] for m in tools[n]]  # the checker's weights: evicted last
            with mgr.use(name, tools[name], soon=[*later, *soon]):
                assert mgr.resident_bytes <= mgr.limit
            hits[name] += mgr.stats["hits"] - before
    return mgr, hits, most


def _poisson(rng: random.Random, lam: float) -> int:
    n, p, threshold = 0, rng.random(), pow(2.718281828459045, -lam)
    while p > threshold:
        n, p = n + 1, p * rng.random()
    return n


def time_moves(repeats: int = 20) -> None:
    """Real copies: p50 ms to bring a ControlNet and a UNet from pinned CPU memory onto the GPU."""
    with memory.fp16_on("meta"):
        nets = {"ControlNet": memory.controlnet(), "UNet": memory.unet()}
    for m in nets.values():
        m.to_empty(device="cpu")  # real memory; the values do not matter for a copy
    mgr = Residency("cuda:0", BUDGET, RESERVE, home="cpu")  # pins home memory on adoption
    mgr.adopt(nets.values())
    for name, m in nets.items():
        ms = []
        for _ in range(repeats):
            mgr.evict([m])
            torch.cuda.synchronize()
            started = time.perf_counter()
            comps = mgr.make_resident(name, [m])
            torch.cuda.synchronize()
            ms.append((time.perf_counter() - started) * 1000)
            allocated = torch.cuda.memory_allocated()
            mgr.release(comps)
        size = unique_bytes([m])
        p50 = statistics.median(ms)
        print(f"cuda ({torch.cuda.get_device_name()}): {name} {size / MIB:.1f} MiB onto the GPU: p50 {p50:.1f} ms "
              f"({size / GIB / (p50 / 1000):.1f} GiB/s), min {min(ms):.1f} ms; "
              f"memory_allocated {allocated / MIB:.1f} MiB, accounted {mgr.resident_bytes / MIB:.1f} MiB")
        print(f"cuda_{name.lower()}_to_device_p50_ms={p50:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-cuda", action="store_true", help="skip the real copies even if a GPU is present")
    parser.add_argument("--smoke", action="store_true", help="a short trace, no sensitivity runs, no GPU")
    args = parser.parse_args()
    memory.quiet_diffusers()
    started = time.perf_counter()
    tools = build_tools()
    total = unique_bytes(m for mods in tools.values() for m in mods)
    largest = max(tools, key=lambda n: unique_bytes(tools[n]))
    trace = make_trace(random.Random(SEED), jobs=200 if args.smoke else JOBS)
    checks = sum(n in DRAWS for n in trace)
    top4 = sum(trace.count(n) for n in POPULARITY[:4]) / len(trace)
    print(f"seed tool set at real size: {len(tools)} tools, {total / MIB:.1f} MiB of weights on one device "
          f"(largest: {largest}, {unique_bytes(tools[largest]) / MIB:.1f} MiB)")
    print(f"budget {BUDGET / MIB:.0f} MiB minus a {RESERVE / MIB:.0f} MiB reserve: weights may take "
          f"{(BUDGET - RESERVE) / MIB:.0f} MiB")
    print(f"trace: {len(trace)} jobs over {len(set(trace))} tools, Zipf s={ZIPF_S}; the top 4 tools "
          f"{top4:.0%} of jobs; bursty arrivals (Poisson, 1 per tick); {checks} drawings checked by the "
          f"{SAFETY_CHECKER}")

    runs = {"fifo": replay(tools, trace, 0, SEED), "warm-first": replay(tools, trace, MAX_OVERTAKES, SEED)}
    print(f"{'':<28}{'fifo':>12}{'warm-first':>12}   (max_overtakes={MAX_OVERTAKES})")
    rows = [("hit rate", lambda m, h, o: f"{m.stats['hits'] / m.stats['jobs']:.1%}"),
            ("moves onto the device", lambda m, h, o: m.stats["moves_in"]),
            ("moves out (evictions)", lambda m, h, o: m.stats["moves_out"]),
            ("MiB moved in", lambda m, h, o: f"{m.stats['bytes_in'] / MIB:.0f}"),
            ("peak resident MiB", lambda m, h, o: f"{m.peak_bytes / MIB:.1f}"),
            ("most overtakes of a job", lambda m, h, o: o)]
    for label, cell in rows:
        print(f"{label:<28}" + "".join(f"{cell(*r)!s:>12}" for r in runs.values()))
    mgr, hits, most = runs["warm-first"]
    uses = Counter(trace) + Counter({SAFETY_CHECKER: checks})
    print("per tool (warm-first): uses/hits  " + ", ".join(f"{n} {uses[n]}/{hits[n]}" for n in uses))
    assert all(r[0].peak_bytes <= BUDGET - RESERVE for r in runs.values()) and most <= MAX_OVERTAKES
    assert set(hits) <= set(uses) and mgr.stats["jobs"] == sum(uses.values())  # every use ran under the budget
    for s in () if args.smoke else (1.0, 1.2, 1.5):  # how much the figure owes to this trace: other seeds, other skews
        rates = []
        for seed in range(2, 7):
            m = replay(tools, make_trace(random.Random(seed), s), MAX_OVERTAKES, seed)[0]
            rates.append(m.stats["hits"] / m.stats["jobs"])
        print(f"sensitivity: Zipf s={s}, seeds 2-6: warm-first hit rate {min(rates):.1%} to {max(rates):.1%} "
              f"(mean {statistics.mean(rates):.1%})")
    print(f"built and replayed on meta in {time.perf_counter() - started:.1f} s")
    if torch.cuda.is_available() and not (args.no_cuda or args.smoke):
        time_moves()
    print(f"warm_first_hit_rate={mgr.stats['hits'] / mgr.stats['jobs']:.3f}")
    print(f"peak_resident_mib={mgr.peak_bytes / MIB:.1f}")
    print(f"budget_mib={BUDGET / MIB:.1f}")


if __name__ == "__main__":
    main()
