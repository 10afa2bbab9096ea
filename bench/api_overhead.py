"""What the [api] listener adds to a job, over the pool's own job protocol.

Starts ``python -m gpu_pool`` with tiny Text2Image and SafetyChecker models on the CPU, and the
listener (gpu_pool/api/app.py's ``Listener``, the class the pool process starts) in this process over
the pool's socket. Then runs the same drawing (64x64, 1 step, a fixed seed) in rounds, three ways in
turn, each with its real client, each to a decoded image at the client:

    direct   core's PoolClient over the pool's unix socket (JobRequest "Text2Image")
    images   the ``openai`` package: client.images.generate(..., response_format="b64_json")
    mcp      the ``mcp`` SDK's Client over streamable HTTP at /mcp: call_tool("generate_image")

Each job's time outside the model = its wall time at the client minus the seconds the pool spent in
the model (the done event's, seen by the listener's job stream for the API faces). A round's
overhead for a face is its time outside the model minus the direct job's in the same round; the
figure is the median over rounds. It is what the face adds: HTTP, the key check, PNG encoding,
base64, JSON, the MCP session's framing. In the pool process the listener calls the backend
directly, one socket hop less than here, so these figures are an upper bound.

    .venv/bin/python bench/api_overhead.py [--rounds 100] [--smoke]

``--smoke``: 15 rounds. Ends with ``images_api_overhead_p50_ms=`` and ``mcp_overhead_p50_ms=`` (goal: 10 ms each).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import logging
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import openai
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from PIL import Image

import settings
from core.pool_client import PoolClient
from gpu_pool.api.app import Listener
from gpu_pool.protocol import Event, JobRequest, ModelInfo
from testkit.api import ENV_KEYS, api_config, start_api_pool
from testkit.pool import stop_pool

FIGURES = ("images_api_overhead_p50_ms", "mcp_overhead_p50_ms")
MODELS = {"Text2Image": "sd15", "SafetyChecker": "safety-flags-none"}
PROMPT, SIDE, STEPS, SEED, WARMUP = "a red house by a lake", 64, 1, 7, 3
KEYS_ENV = "VCHAT_API_KEYS"  # [api] keys_env
LIMITS = "requests_per_minute = 100000\nimages_per_day = 1000000"  # the bench's key is never held back


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


class Timed:
    """The pool's job protocol as the listener's ``Jobs``, noting each job's seconds in the model."""

    def __init__(self, jobs: PoolClient):
        self.jobs, self.seconds = jobs, 0.0

    async def run(self, request: JobRequest) -> AsyncIterator[Event]:
        async with contextlib.aclosing(self.jobs.run(request)) as events:
            async for ev in events:
                if ev.kind == "done":
                    self.seconds = ev.seconds or 0.0
                yield ev

    async def models(self) -> list[ModelInfo]:
        return await self.jobs.models()


async def rounds(config: settings.Config, socket_url: str, n: int) -> dict[str, list[float]]:
    """Ms outside the model of each face per round, after WARMUP rounds; the faces take turns going first."""
    direct, timed = PoolClient(socket_url), Timed(PoolClient(socket_url))
    listener = await Listener(replace(config, api=replace(config.api, port=0)), lambda: timed).start()
    url = f"http://127.0.0.1:{listener.port}"
    images = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=ENV_KEYS["alice"], max_retries=0)
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {ENV_KEYS['alice']}"})
    outside: dict[str, list[float]] = {"direct": [], "images": [], "mcp": []}
    async with Client(streamable_http_client(f"{url}/mcp", http_client=http)) as mcp:

        async def by_direct() -> tuple[Image.Image, float]:
            done = await direct.result(JobRequest("Text2Image", {"prompt": PROMPT, "width": SIDE, "height": SIDE,
                                                                 "steps": STEPS, "seed": SEED}))
            assert done.kind == "done", done
            return done.images[0].to_pil(), done.seconds or 0.0

        async def by_images() -> tuple[Image.Image, float]:
            r = await images.images.generate(prompt=PROMPT, size=f"{SIDE}x{SIDE}", response_format="b64_json",
                                             extra_body={"steps": STEPS, "seed": SEED})
            return Image.open(io.BytesIO(base64.b64decode(r.data[0].b64_json))).convert("RGB"), timed.seconds

        async def by_mcp() -> tuple[Image.Image, float]:
            r = await mcp.call_tool("generate_image", {"prompt": PROMPT, "width": SIDE, "height": SIDE,
                                                       "steps": STEPS, "seed": SEED})
            assert not r.is_error, r.content
            block = next(c for c in r.content if c.type == "image")
            return Image.open(io.BytesIO(base64.b64decode(block.data))).convert("RGB"), timed.seconds

        faces = {"direct": by_direct, "images": by_images, "mcp": by_mcp}
        order = list(faces)
        for i in range(WARMUP + n):
            order = order[1:] + order[:1]
            for name in order:
                started = time.perf_counter()
                out, seconds = await faces[name]()
                wall = time.perf_counter() - started
                assert out.size == (SIDE, SIDE) and seconds > 0, (name, out.size, seconds)
                if i >= WARMUP:
                    outside[name].append((wall - seconds) * 1000)
    await images.close()
    await listener.stop()
    await direct.close()
    await timed.jobs.close()
    return outside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--smoke", action="store_true", help="15 rounds")
    args = parser.parse_args()
    if args.smoke:
        args.rounds = 15
    logging.getLogger("mcp").setLevel(logging.WARNING)  # the SDK's session notes
    os.environ[KEYS_ENV] = ",".join(f"{n}={k}" for n, k in ENV_KEYS.items())  # the in-process listener's keys
    with tempfile.TemporaryDirectory() as tmp:
        path = api_config(Path(tmp), MODELS, extra=LIMITS)
        pool = start_api_pool(path)
        try:
            walls = asyncio.run(rounds(settings.load(path, env_check=False), pool.url, args.rounds))
        finally:
            stop_pool(pool)
    over = {face: [w - d for w, d in zip(walls[face], walls["direct"])] for face in ("images", "mcp")}
    print(f"rounds: {args.rounds}, Text2Image {SIDE}x{SIDE}, {STEPS} step, tiny model on cpu, safety checker on")
    print(f"{'':34}{'p50 ms':>10}{'p95 ms':>10}")
    for face, label in (("direct", "direct: outside the model"), ("images", "images API: outside the model"),
                        ("mcp", "MCP: outside the model")):
        print(f"{label:34}{pct(walls[face], 50):>10.2f}{pct(walls[face], 95):>10.2f}")
    for face, label in (("images", "images API overhead"), ("mcp", "MCP overhead")):
        print(f"{label:34}{pct(over[face], 50):>10.2f}{pct(over[face], 95):>10.2f}"
              f"   (mean {statistics.mean(over[face]):.2f})")
    print(f"images_api_overhead_p50_ms={pct(over['images'], 50):.3f}")
    print(f"mcp_overhead_p50_ms={pct(over['mcp'], 50):.3f}")


if __name__ == "__main__":
    main()
