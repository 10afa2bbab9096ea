"""Speed on one GPU (issue 22): diffusers' defaults against the pool's fast path, same-model batching, the
compile cache and the built-in LLM's tokens/s, in one run; ``name=value`` lines, the device and versions first.

    python bench/gpu_speed.py > bench/results/gpu_speed_h100.txt   # CUDA (not timed yet; ~20 GB of scratch)
    python bench/gpu_speed.py --smoke                              # CPU, tiny shapes, 64 px (about 80 s)

Real-size random weights (speed does not depend on their values), written to ``--scratch`` in the hub's
layout and loaded as a user's would be: SD1.5 (bench/_speed.py, as bench/gpu_check.py writes it), Qwen3-4B
and FLUX.2 klein 4B (bench/_modern.py's configs; klein's text encoder is that Qwen3). In this order:

1. ``sd15_default_its``: diffusers' StableDiffusionPipeline from that folder, fp16, default attention, 512²,
   50 steps (iterations per second: steps / seconds per image; one warm-up, the median of ``--runs``);
   ``klein_default_s``: diffusers' Flux2KleinPipeline, bfloat16, seconds per 1024² image, 4 steps. Both
   before the pool runs here (its fast path may set process-wide switches), each on a thread of its own
   as the pool runs jobs, with the pool process's malloc thresholds (gpu_pool/heap.py).
2. ``compile_cold_s``, ``compile_warm_s``: a fresh ``python bench/gpu_speed.py --ready CONFIG`` times a
   LocalPool from its start (its modules imported) until Text2Image is ready, ``fast = "on"`` and the
   default warmup_sizes, first on an empty data dir, then again on the same one. Each child gets empty
   torch caches of its own (TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR): only the pool's data dir carries over.
3. ``sd15_pool_its``: the pool's Text2Image (Registry and Scheduler in this process, ``fast = "on"``, the
   data dir of 2.), same prompt, steps and size, one job at a time; ``sd15_speedup``: over the default.
4. ``batch4_images_per_s``: 4 Text2Image jobs (seeds 1-4) queued at once with ``max_batch = 4``,
   ``serial4_images_per_s`` the same with ``max_batch = 1`` (another pool, same data dir), each after a
   warm-up round; ``batch_speedup``. ``batch_max_pixel_diff``: the largest difference of a pixel channel
   between the two rounds' images of one seed; ``batch_min_progress_events``: the fewest progress events
   a batched job got.
5. ``llm_tokens_per_s``: the pool's LLM (Qwen3-4B, random, bfloat16, not quantized) answering one chat
   message: tokens generated (``llm_completion_tokens``, up to ``--llm-tokens``) over the job's wall time.
6. ``klein_pool_s``: the pool's Klein (``fast = "on"``, warmed up at 1024 only, not quantized), as 1.;
   ``klein_speedup``: the default's seconds over the pool's.

A part that fails prints ``error_<part>=`` (its traceback on stderr) and nothing it did not measure; the
exit status is then 1. Without a CUDA GPU (and without ``--smoke``) it prints ``no GPU`` and exits 0.
``--smoke``: the same code on the CPU at 64 px with the tiny SD1.5 and small shapes of Qwen3 and klein,
the pool parts with ``fast = "off"`` but 2. with ``"on"`` (a CPU compile of the tiny UNet took 35 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

FIGURES = ("compile_cold_s", "compile_warm_s", "sd15_default_its", "sd15_pool_its", "sd15_speedup",
           "batch4_images_per_s", "serial4_images_per_s", "batch_speedup", "batch_max_pixel_diff",
           "batch_min_progress_events", "llm_tokens_per_s", "klein_default_s", "klein_pool_s")
PARTS = ("compile", "sd15", "batch", "llm", "klein")
PROMPT = "a red lighthouse on a cliff above a stormy sea, oil painting"
SEEDS = (1, 2, 3, 4)
measured: dict[str, float] = {}


@dataclass
class Run:
    """What one run measures at: the GPU's figures, or --smoke's small ones on the CPU."""

    device: str = "cuda:0"
    sd_dtype: str = "float16"
    dtype: str = "bfloat16"  # klein and the LLM
    size: int = 512
    steps: int = 50
    klein_size: int = 1024
    klein_steps: int = 4
    fast: str = "on"  # the pool parts; the compile part is always "on"
    warmup_sizes: list[int] = field(default_factory=lambda: [512, 768, 1024])  # config.toml's default
    runs: int = 3
    llm_tokens: int = 256


SMOKE = Run(device="cpu", sd_dtype="float32", dtype="float32", size=64, steps=4, klein_size=64, klein_steps=2,
            fast="off", warmup_sizes=[64], runs=1, llm_tokens=16)


def say(name: str, value: float | str) -> None:
    if isinstance(value, float):
        measured[name] = value
        value = f"{value:.4g}"
    print(f"{name}={value}", flush=True)


def ratio(name: str, over: str, under: str) -> None:
    """``name`` = ``over`` / ``under``, when both were measured."""
    if over in measured and under in measured:
        say(name, measured[over] / measured[under])


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


# --- the pool in this process ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def local_pool(config: Path):
    """A LocalPool (Registry + Scheduler) on ``config``, every model loaded by its Registry (and warmed up)."""
    import settings
    from gpu_pool.local import LocalPool

    pool = LocalPool(settings.load(config, env_check=False))
    try:
        for name in pool.registry.config.models:
            entry = await pool.registry.load(name)
            if entry.state != "ready":
                raise RuntimeError(f"{name} did not load: {entry.error}")
        yield pool
    finally:
        pool.close()


async def job(pool, model: str, params: dict):
    """Run one job through the scheduler: (its done event, how many progress events it had)."""
    from gpu_pool.protocol import JobRequest

    progress, last = 0, None
    async for last in pool.run(JobRequest(model, params)):
        progress += last.kind == "progress"
    if last is None or last.kind != "done":
        raise RuntimeError(f"a {model} job failed: {last and last.message}\n{last and last.detail or ''}")
    return last, progress


async def timed_round(pool, clock, model: str, params: dict, seeds=SEEDS) -> tuple[float, list]:
    """Jobs with ``seeds`` queued at once: (seconds until the last is done, [(done, progress events)])."""
    clock.sync()
    started = time.perf_counter()
    out = await asyncio.gather(*(job(pool, model, {**params, "seed": s}) for s in seeds))
    clock.sync()
    return time.perf_counter() - started, out


async def ready_s(config: Path) -> float:
    """Seconds from the pool's start until its models are ready (loaded, fast path warmed up); the pool's
    modules are imported first (imports take as long with a compile cache as without)."""
    import torch

    import settings
    from gpu_pool import local  # noqa: F401
    from gpu_pool.models import loader

    for name in settings.load(config, env_check=False).models:
        loader(name)
    started = time.perf_counter()
    async with local_pool(config):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - started


def ready_in_fresh_process(config: Path, scratch: Path) -> float:
    from testkit.pool import child_env

    caches = {var: tempfile.mkdtemp(prefix=var.lower() + "-", dir=scratch)
              for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    done = subprocess.run([sys.executable, __file__, "--ready", str(config)], env=child_env(**caches),
                          capture_output=True, text=True, timeout=600)
    found = re.search(r"^ready_s=(\S+)$", done.stdout, re.M)
    if done.returncode or not found:
        raise RuntimeError(f"the child exited {done.returncode}: {done.stderr[-2000:]}")
    return float(found[1])


# --- the parts ------------------------------------------------------------------------------------------------


def compile_part(run: Run, config: Path, scratch: Path) -> None:
    say("compile_cold_s", ready_in_fresh_process(config, scratch))
    say("compile_warm_s", ready_in_fresh_process(config, scratch))


def sd15_default(run: Run, clock, folder: Path) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    from gpu_pool.models.sd import QUALITY, SEED_NEGATIVE  # the pool's prompts, so both draw the same

    variant = "fp16" if any((folder / "unet").glob("*.fp16.*")) else None
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch_dtype(run.sd_dtype), variant=variant,
                                                   safety_checker=None, requires_safety_checker=False)
    pipe = pipe.to(run.device)
    pipe.set_progress_bar_config(disable=True)

    def draw() -> None:
        pipe(PROMPT + QUALITY, negative_prompt=SEED_NEGATIVE, num_inference_steps=run.steps, width=run.size,
             height=run.size, generator=torch.Generator(run.device).manual_seed(1))

    clock.call(draw)  # warm-up
    say("sd15_default_its", run.steps / clock.time(draw, run.runs))


async def sd15_pool(run: Run, clock, config: Path) -> None:
    params = {"prompt": PROMPT, "steps": run.steps, "width": run.size, "height": run.size}
    async with local_pool(config) as pool:
        await job(pool, "Text2Image", {**params, "seed": 1})  # warm-up
        times = [(await timed_round(pool, clock, "Text2Image", params, SEEDS[:1]))[0] for _ in range(run.runs)]
    say("sd15_pool_its", run.steps / sorted(times)[len(times) // 2])


async def four_at_once(clock, config: Path, params: dict) -> tuple[float, list]:
    async with local_pool(config) as pool:
        await timed_round(pool, clock, "Text2Image", params)  # warm-up: the batch's shapes too
        return await timed_round(pool, clock, "Text2Image", params)


async def batch(run: Run, clock, batched: Path, serial: Path) -> None:
    params = {"prompt": PROMPT, "steps": run.steps, "width": run.size, "height": run.size}
    rounds = {}
    for name, config in (("batch4", batched), ("serial4", serial)):
        rounds[name] = await four_at_once(clock, config, params)
        clock.free()  # that pool's models are gone before the next one loads
        say(f"{name}_images_per_s", len(SEEDS) / rounds[name][0])
    import numpy as np

    diffs = [np.abs(np.asarray(a.images[0].to_pil(), np.int16) - np.asarray(b.images[0].to_pil(), np.int16)).max()
             for (a, _), (b, _) in zip(rounds["batch4"][1], rounds["serial4"][1])]
    say("batch_max_pixel_diff", float(max(diffs)))
    say("batch_min_progress_events", float(min(n for _, n in rounds["batch4"][1])))


async def llm(run: Run, clock, config: Path) -> None:
    message = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper and the sea."}]
    async with local_pool(config) as pool:
        await job(pool, "LLM", {"messages": message, "max_tokens": 8, "seed": 1})  # warm-up
        seconds, [(done, _)] = await timed_round(pool, clock, "LLM", {"messages": message,
                                                                      "max_tokens": run.llm_tokens}, SEEDS[:1])
    tokens = json.loads(done.text)["completion_tokens"]
    if not tokens:
        raise RuntimeError("the LLM answered with no tokens")
    say("llm_completion_tokens", float(tokens))
    say("llm_tokens_per_s", tokens / seconds)


def klein_default(run: Run, clock, folder: Path) -> None:
    import torch
    from diffusers import Flux2KleinPipeline

    pipe = Flux2KleinPipeline.from_pretrained(folder, torch_dtype=torch_dtype(run.dtype)).to(run.device)
    pipe.set_progress_bar_config(disable=True)

    def draw() -> None:
        pipe(prompt=PROMPT, num_inference_steps=run.klein_steps, width=run.klein_size, height=run.klein_size,
             guidance_scale=1.0, generator=torch.Generator(run.device).manual_seed(1))

    clock.call(draw)  # warm-up
    say("klein_default_s", clock.time(draw, run.runs))


async def klein_pool(run: Run, clock, config: Path) -> None:
    params = {"prompt": PROMPT, "steps": run.klein_steps, "width": run.klein_size, "height": run.klein_size}
    async with local_pool(config) as pool:
        await job(pool, "Klein", {**params, "seed": 1})  # warm-up
        times = [(await timed_round(pool, clock, "Klein", params, SEEDS[:1]))[0] for _ in range(run.runs)]
    say("klein_pool_s", sorted(times)[len(times) // 2])


# --- main -------------------------------------------------------------------------------------------------------


def versions(run: Run) -> None:
    import torch

    say("device", torch.cuda.get_device_name(run.device) if run.device.startswith("cuda") else "cpu")
    for module in ("torch", "diffusers", "transformers"):
        say(module, importlib.import_module(module).__version__)
    say("cuda", torch.version.cuda or "none")


def measure(run: Run, parts: list[str], scratch: Path) -> None:
    from bench import _speed
    from bench.gpu_check import fail
    from scripts.build_tiny_models import ensure

    clock, tiny, data, small = _speed.Clock(run.device), ensure(), scratch / "data", run.device == "cpu"

    def attempt(name: str, fn, *args):
        """``fn(*args)`` (awaited when it is a coroutine function); a failure prints ``error_<name>=``."""
        try:
            return asyncio.run(fn(*args)) if inspect.iscoroutinefunction(fn) else fn(*args)
        except Exception as e:
            fail(name, e)
        finally:
            clock.free()

    def config(name: str, models: dict, **keys) -> Path:
        keys = {"fast": run.fast, "warmup_sizes": run.warmup_sizes, **keys}
        return _speed.pool_config(scratch / f"{name}.toml", data, models, size=run.size, steps=run.steps, **keys)

    # the checkpoints, then diffusers' defaults, then the pool: the fast path may turn on process-wide switches
    # (an attention backend, matmul precision) that must not speed up a default measured after it
    sd = tiny / "sd15" if small else attempt("write_sd15", _speed.write_sd15, scratch / "sd15", run.device)
    qwen3 = klein = None
    if sd is not None and {"llm", "klein"} & set(parts):
        qwen3 = attempt("write_qwen3", _speed.write_qwen3, scratch / "qwen3", tiny / "qwen3", run.device,
                        torch_dtype(run.dtype), _speed.SMALL_QWEN3 if small else {})
    if qwen3 is not None and "klein" in parts:
        klein = attempt("write_klein", _speed.write_klein, scratch / "klein", tiny / "klein", qwen3, run.device,
                        torch_dtype(run.dtype), _speed.SMALL_KLEIN if small else {},
                        _speed.SMALL_KLEIN_VAE if small else {})
    if sd is None or {"llm", "klein"} & set(parts) and qwen3 is None or "klein" in parts and klein is None:
        return  # a checkpoint could not be written (error_write_... says why)
    sd_model = {"Text2Image": (run.device, run.sd_dtype, str(sd))}
    if "sd15" in parts:
        attempt("sd15_default", sd15_default, run, clock, sd)
    if "klein" in parts:
        attempt("klein_default", klein_default, run, clock, klein)
    if "compile" in parts:
        attempt("compile", compile_part, run, config("compile", sd_model, fast="on"), scratch)
    if "sd15" in parts:
        attempt("sd15_pool", sd15_pool, run, clock, config("pool", sd_model))
        ratio("sd15_speedup", "sd15_pool_its", "sd15_default_its")
    if "batch" in parts:
        attempt("batch", batch, run, clock, config("batch4", sd_model, max_batch=4),
                config("serial4", sd_model, max_batch=1))
        ratio("batch_speedup", "batch4_images_per_s", "serial4_images_per_s")
    if "llm" in parts:
        say("llm_model", f"Qwen3-{'small' if small else '4B'}-random-{run.dtype}")
        attempt("llm", llm, run, clock, config("llm", {"LLM": (run.device, run.dtype, str(qwen3))}))
    if "klein" in parts:
        attempt("klein_pool", klein_pool, run, clock,
                config("klein", {"Klein": (run.device, run.dtype, str(klein))}, warmup_sizes=[run.klein_size]))
        ratio("klein_speedup", "klein_default_s", "klein_pool_s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, 64 px (the same code paths)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"some of {','.join(PARTS)} (default: all)")
    parser.add_argument("--runs", type=int, default=0, help="timed runs per figure, the median kept (default 3)")
    parser.add_argument("--llm-tokens", type=int, default=0, help="tokens the LLM generates (default 256)")
    parser.add_argument("--scratch", default="", help="where the 20 GB of checkpoints go (default: /dev/shm when "
                                                      "it has room, else the temp folder)")
    parser.add_argument("--ready", metavar="CONFIG", help=argparse.SUPPRESS)  # the compile part's child
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub
    warnings.simplefilter("ignore")
    from gpu_pool import heap

    # as in a pool process (gpu_pool/__main__.py), for both sides: without it the first runs here took
    # 5-20x as long on the CPU, mapping and faulting in each big buffer anew
    heap.keep_freed_buffers()
    if args.ready:
        say("ready_s", asyncio.run(ready_s(Path(args.ready))))
        return 0
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("no GPU")
        return 0
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from bench.gpu_check import _roomy_ram_disk, failures

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    run = SMOKE if args.smoke else Run()
    run.runs, run.llm_tokens = args.runs or run.runs, args.llm_tokens or run.llm_tokens
    versions(run)
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="gpu-speed-", dir=args.scratch or (None if args.smoke else
                                                                             _roomy_ram_disk())))
    try:
        measure(run, args.parts.split(","), scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    say("total_s", round(time.monotonic() - started, 1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
