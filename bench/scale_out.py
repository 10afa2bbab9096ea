"""The pool on Ray Serve, two CPU replicas, against the local pool: placement and per-job overhead.

Starts two pools with every seed model at tiny size (tests/config.tiny.toml):
the local one (``python -m gpu_pool``) and one on Ray (``[pool] backend =
"ray"``, a Ray instance of its own with 2 CPU replicas). Each places every
model once before the trace, as the bot's pool does at startup.

1. Placement: replays the residency bench's skewed trace (bench/residency.py:
   Zipf-skewed sessions of three users, interleaved) through the Ray pool,
   three jobs in flight at a time. A job is a warm hit when the replica it ran
   on had its model ready when it arrived; a load is a model loaded on a
   replica for a job (a copy of a hot model). ``loads_after_warmup`` counts
   those after the first 10 % of the trace.
2. Overhead: the same jobs one at a time through both pools. A job's overhead
   is its wall time at the client minus the time inside the model (the done
   event's ``seconds``); ``ray_overhead_p50_ms`` is the median over jobs of
   (its overhead on Ray - its overhead in the local pool).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/scale_out.py [--jobs 300] [--overhead-jobs 100] [--smoke]

``--smoke``: every model once, then 20 jobs of the trace; 10 jobs for the overhead.
Needs ray[serve] (the `ray` extra, which ./scripts/test installs). Ends with ``warm_hit_rate=``,
``loads_after_warmup=`` and ``ray_overhead_p50_ms=``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections import deque
from pathlib import Path

from bench.residency import POPULARITY, SEED, make_trace
from core.pool_client import PoolClient
from gpu_pool.protocol import JobRequest, RawImage
from testkit.images import house, square_mask
from testkit.pool import launch_pool, ray_on_cpu, stop_pool, tiny_models, write_tiny_config

FIGURES = ("warm_hit_rate", "loads_after_warmup", "ray_overhead_p50_ms")
USERS = 3
AT_RESOLUTION = {"Image2Line", "Image2Hed", "Image2Scribble", "Image2Pose"}  # the controlnet_aux detectors


def job(model: str) -> JobRequest:
    """A small job for each seed model (tiny sizes, 2 diffusion steps)."""
    img, small = RawImage.from_pil(house(sky=(90, 140, 200))), {"steps": 2}
    if model in ("Text2Image", "Variations"):
        params = {"prompt": "a cat", "width": 64, "height": 64} if model == "Text2Image" else {}
        return JobRequest(model, {**params, **small}, [img] if model == "Variations" else [])
    if model == "Inpainting":
        return JobRequest(model, {"prompt": "a red house", **small}, [img, RawImage.from_pil(square_mask())])
    params = {"ImageCaptioning": {}, "VisualQuestionAnswering": {"question": "what is on the roof?"},
              "InstructPix2Pix": {"prompt": "make it winter", **small}, "Text2Mask": {"prompt": "the roof"},
              "Text2Box": {"prompt": "the roof"}, "Segmenting": {}, "Upscale": {"prompt": "a house", **small}}
    if model in params:
        return JobRequest(model, params[model], [img])
    if model.startswith("Image2"):
        return JobRequest(model, {"detect_resolution": 64} if model in AT_RESOLUTION else {}, [img])
    return JobRequest(model, {"prompt": "a house", **small}, [img])  # the ControlNet generators


def configs(folder: Path) -> tuple[Path, Path]:
    """Every tiny model: the local pool's config, and the Ray pool's (2 CPU replicas)."""
    return (write_tiny_config(folder / "local"),
            write_tiny_config(folder / "ray", "\n" + ray_on_cpu("200MiB"), backend="ray"))


async def counters(client: PoolClient) -> dict[str, int]:
    reps = (await client._call("GET", "/replicas"))["replicas"]
    return {k: sum(r[k] for r in reps) for k in ("jobs", "warm", "loads")}


async def overhead(client: PoolClient, req: JobRequest) -> float:
    started = time.perf_counter()
    done = await client.result(req)
    wall = time.perf_counter() - started
    assert done.kind == "done", (req.model, done.message)
    return (wall - done.seconds) * 1000


async def replay(ray: PoolClient, trace: list[str]) -> tuple[dict, dict]:
    """The trace through the Ray pool by USERS users, each taking the next job when its last is done;
    the counters' change overall and after the warm-up (the first 10 % of the jobs)."""
    todo, warm_up = deque(enumerate(trace)), len(trace) // 10
    start, at_warm_up = await counters(ray), {}

    async def user() -> None:
        while todo:
            i, model = todo.popleft()
            if i == warm_up:
                at_warm_up.update(await counters(ray))
            done = await ray.result(job(model))
            assert done.kind == "done", (model, done.message)

    await asyncio.gather(*(user() for _ in range(USERS)))
    end = await counters(ray)
    return {k: end[k] - start[k] for k in end}, {k: end[k] - at_warm_up[k] for k in end}


async def main(args: argparse.Namespace, local_cfg: Path, ray_cfg: Path) -> None:
    trace = make_trace(random.Random(SEED))[:args.jobs]
    if args.smoke:  # every model's job once, then the start of the trace
        trace = [*POPULARITY, *trace]
    pools = [launch_pool(cfg, "--log-level", "WARNING", group=True) for cfg in (local_cfg, ray_cfg)]
    local, ray = (p.client() for p in pools)
    try:
        await asyncio.gather(*(p.ready(600) for p in pools))
        whole, after = await replay(ray, trace)
        pairs = []
        for model in trace[:args.overhead_jobs]:
            req = job(model)
            pairs.append((await overhead(local, req), await overhead(ray, req)))
    finally:
        await local.close()
        await ray.close()
        for p in pools:
            stop_pool(p, 60)
    report(trace, whole, after, pairs)


def report(trace: list[str], whole: dict, after: dict, pairs: list[tuple[float, float]]) -> None:
    local_ms, ray_ms = [p[0] for p in pairs], [p[1] for p in pairs]
    print(f"trace: {len(trace)} jobs over {len(set(trace))} models, {USERS} in flight, 2 replicas (CPU, tiny models)")
    print(f"warm hits {whole['warm']}/{whole['jobs']}, loads for jobs {whole['loads']} "
          f"({after['loads']} after the first {len(trace) // 10} jobs)")
    print(f"overhead, {len(pairs)} jobs one at a time:  local p50 {statistics.median(local_ms):.2f} ms, "
          f"ray p50 {statistics.median(ray_ms):.2f} ms")
    print(f"warm_hit_rate={whole['warm'] / whole['jobs']:.3f}")
    print(f"loads_after_warmup={after['loads']}")
    print(f"ray_overhead_p50_ms={statistics.median(r - lo for lo, r in pairs):.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--overhead-jobs", type=int, default=100)
    parser.add_argument("--smoke", action="store_true", help="every model once, 20 jobs of the trace, 10 timed")
    arguments = parser.parse_args()
    if arguments.smoke:
        arguments.jobs, arguments.overhead_jobs = 20, 10
    tiny_models()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(arguments, *configs(Path(tmp))))
