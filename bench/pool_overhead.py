"""Time a job spends in the pool outside model compute.

Starts ``python -m gpu_pool`` on a unix socket with Image2Canny (no weights,
a few ms of compute), sends a 512x512 RGB image in and gets a 512x512 image
back, N times. For each job: overhead = wall time at the client minus the
time the pool spent inside ``model.run`` (reported in the done event). Also
times the same loaded model called in-process, for comparison.

    .venv/bin/python bench/pool_overhead.py [--jobs 200] [--smoke]

``--smoke``: 20 jobs. Ends with ``pool_overhead_p50_ms=<float>``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from core.pool_client import PoolClient
from gpu_pool.protocol import JobRequest, RawImage
from testkit.pool import launch_pool, stop_pool

FIGURES = ("pool_overhead_p50_ms",)
CONFIG = """
[pool]
socket = "pool.sock"
[storage]
data_dir = "."
[models.Image2Canny]
device = "cpu"
"""


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def test_image() -> Image.Image:
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, 512, dtype=np.float32)
    arr = (base[None, :, None] + base[:, None, None] * 0.5 + rng.normal(0, 20, (512, 512, 3))) % 256
    return Image.fromarray(arr.astype(np.uint8), "RGB")


async def through_pool(pool, img: Image.Image, n: int) -> tuple[list[float], list[float]]:
    await pool.ready()
    client = PoolClient(pool.url)
    overheads, walls = [], []
    for i in range(n + 10):
        started = time.perf_counter()
        raw = RawImage.from_pil(img)  # the core's side of the transfer counts
        done = await client.result(JobRequest("Image2Canny", {}, [raw]))
        out = done.images[0].to_pil()
        wall = time.perf_counter() - started
        assert done.kind == "done" and out.size == (512, 512), done
        if i >= 10:  # warm-up
            walls.append(wall * 1000)
            overheads.append((wall - done.seconds) * 1000)
    await client.close()
    return overheads, walls


def in_process(img: Image.Image, n: int) -> list[float]:
    import torch

    from gpu_pool.models import loader, load_sd_base
    from gpu_pool.models.base import LoadSpec, SharedBases, check_params

    model = loader("Image2Canny")(LoadSpec("Image2Canny", "", "cpu", torch.float32, ""), SharedBases(load_sd_base))
    params = check_params(model, {}, {})  # the defaults, as the pool fills them
    times = []
    for i in range(n + 10):
        started = time.perf_counter()
        model.run(params, [img], lambda s, t: None)
        if i >= 10:
            times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--smoke", action="store_true", help="20 jobs")
    args = parser.parse_args()
    if args.smoke:
        args.jobs = 20
    img = test_image()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.toml"
        cfg.write_text(CONFIG)
        pool = launch_pool(cfg, "--log-level", "WARNING")
        try:
            overheads, walls = asyncio.run(through_pool(pool, img, args.jobs))
        finally:
            stop_pool(pool)
    local = in_process(img, args.jobs)
    print(f"jobs: {args.jobs}, image 512x512 RGB in and out, model Image2Canny on cpu")
    print(f"{'':28}{'p50 ms':>10}{'p95 ms':>10}")
    print(f"{'through the pool (wall)':28}{pct(walls, 50):>10.2f}{pct(walls, 95):>10.2f}")
    print(f"{'in-process model call':28}{pct(local, 50):>10.2f}{pct(local, 95):>10.2f}")
    print(f"{'pool overhead':28}{pct(overheads, 50):>10.2f}{pct(overheads, 95):>10.2f}")
    print(f"mean overhead {statistics.mean(overheads):.2f} ms")
    print(f"pool_overhead_p50_ms={pct(overheads, 50):.3f}")


if __name__ == "__main__":
    main()
