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

    HF_HUB_OFFLINE=1 .venv/bin/python bench/scale_out.py [--jobs 300] [--overhead-jobs 100]

Needs ray[serve] (requirements-ray.txt). Ends with ``warm_hit_rate=``,
``loads_after_warmup=`` and ``ray_overhead_p50_ms=``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image, ImageDraw  # noqa: E402

from bench.residency import SEED, make_trace  # noqa: E402
from core.pool_client import PoolClient  # noqa: E402
from gpu_pool.protocol import JobRequest, RawImage  # noqa: E402
from tests.conftest import kill_group, ray_on_cpu, spawn_pool  # noqa: E402

RAY = "\n" + ray_on_cpu("200MiB")
USERS = 3
AT_RESOLUTION = {"Image2Canny", "Image2Line", "Image2Hed", "Image2Scribble", "Image2Pose"}  # detect_resolution


def picture() -> RawImage:
    img = Image.new("RGB", (96, 64), (90, 140, 200))
    ImageDraw.Draw(img).polygon([(20, 40), (48, 12), (76, 40)], fill=(150, 40, 30))
    return RawImage.from_pil(img)


def mask() -> RawImage:
    m = Image.new("L", (96, 64), 0)
    ImageDraw.Draw(m).rectangle([10, 10, 40, 40], fill=255)
    return RawImage.from_pil(m)


def job(model: str) -> JobRequest:
    """A small job for each seed model (tiny sizes, 2 diffusion steps)."""
    img, small = picture(), {"steps": 2}
    if model == "Text2Image":
        return JobRequest(model, {"prompt": "a cat", "width": 64, "height": 64, **small})
    if model == "Inpainting":
        return JobRequest(model, {"prompt": "a red house", **small}, [img, mask()])
    params = {"ImageCaptioning": {}, "VisualQuestionAnswering": {"question": "what is on the roof?"},
              "InstructPix2Pix": {"prompt": "make it winter", **small}, "Text2Mask": {"prompt": "the roof"}}
    if model in params:
        return JobRequest(model, params[model], [img])
    if model.startswith("Image2"):
        return JobRequest(model, {"detect_resolution": 64} if model in AT_RESOLUTION else {}, [img])
    return JobRequest(model, {"prompt": "a house", **small}, [img])  # the ControlNet generators


def configs(folder: Path) -> tuple[Path, Path]:
    text = (ROOT / "tests" / "config.tiny.toml").read_text()
    text = text.replace('"../build/tiny-models', f'"{ROOT}/build/tiny-models')
    local, ray = folder / "local", folder / "ray"
    for sub, extra, body in ((local, "", text), (ray, RAY, text.replace("[pool]\n", '[pool]\nbackend = "ray"\n', 1))):
        sub.mkdir()
        (sub / "config.toml").write_text(body.replace('data_dir = "../data/tiny"', 'data_dir = "data"') + extra)
    return local / "config.toml", ray / "config.toml"


def start(config: Path) -> subprocess.Popen:
    return spawn_pool(config, "--log-level", "WARNING", group=True)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    kill_group(proc)  # anything of Ray still in its process group


async def ready(client: PoolClient, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a pool exited with code {proc.returncode}")
        if await client.health():
            states = [m.state for m in await client.models()]
            if states and all(s == "ready" for s in states):
                return
        await asyncio.sleep(0.5)
    raise SystemExit("the pools did not load their models in time")


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
    import settings

    trace = make_trace(random.Random(SEED))[:args.jobs]
    local_proc, ray_proc = start(local_cfg), start(ray_cfg)
    local = PoolClient(settings.load(local_cfg, env_check=False).pool.url)
    ray = PoolClient(settings.load(ray_cfg, env_check=False).pool.url)
    try:
        await ready(local, local_proc)
        await ready(ray, ray_proc)
        whole, after = await replay(ray, trace)
        pairs = []
        for model in trace[:args.overhead_jobs]:
            req = job(model)
            pairs.append((await overhead(local, req), await overhead(ray, req)))
    finally:
        await local.close()
        await ray.close()
        stop(ray_proc)
        stop(local_proc)
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
    arguments = parser.parse_args()
    from scripts.build_tiny_models import ensure

    ensure()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(arguments, *configs(Path(tmp))))
