"""The diffusion fast path: what it does to a loaded model, its warm-up, and its compile cache.

``[pool] fast`` ("auto": CUDA devices only; "on": every device, the CPU too, for tests; "off": diffusers as
it comes). On a model whose class names modules in ``fast_modules()`` (the SD1.5 family and Variations:
"unet" and "vae"; FLUX.2 klein: "transformer" and "vae"), the registry's load does, in order:

1. ``apply`` (after ``quantize``, before the residency manager adopts the weights, since it makes new ones):
   channels_last on the conv networks (UNet, VAE); fused QKV projections (one matmul where there were three;
   diffusers keeps the unfused weights too, a few per cent of the UNet's bytes; not on quantized weights); the
   fastest attention backend torch and the GPU offer (``ATTENTION``: cuDNN's on Hopper and newer, torch's
   flash kernel on Ampere and newer, in 16-bit dtypes, where diffusers' attention dispatches: klein; SD's
   processors call torch's SDPA, which picks its kernel itself; a backend that will not set is skipped, never
   a failed load); with ``[pool] step_cache`` = N (2 or more), diffusers' TaylorSeer cache on FLUX.2
   klein's transformer (``STEP_CACHE``): from step ``CACHE_AFTER`` on, a full pass every N steps and the
   steps between predicted from the last ones (a Taylor series), trading fine detail for speed; then regional
   ``torch.compile`` of the denoiser's repeated blocks (diffusers' ``compile_repeated_blocks``: about the
   speed of a whole-model compile for a tenth of its compile time). The SD base's UNet and VAE are the same
   objects under several models (``SharedBases``), so every step is done once per module object (``MARK`` on
   the module says what was done).
2. ``warm_up``: the model's own short runs (2 steps, no progress to anyone) at ``[pool] warmup_sizes``,
   under ``torch.inference_mode`` as jobs run, while the model still shows "loading", so no user waits for a
   compile. Under a residency budget the weights are brought onto the device for it (the manager's ``use``,
   as a job does): compiling on the home copy would compile for the wrong device. If they cannot come
   (the model is larger than the budget, or the device stays busy for ``WARM_WAIT`` seconds) the warm-up is
   skipped with a log line and the first job of each size compiles. A failed warm-up never fails the load:
   it logs a warning and ``undo`` turns the fast path off for that model's modules (eager, as diffusers).
3. The compile cache lives in ``<storage.data_dir>/compile-cache`` (``TORCHINDUCTOR_CACHE_DIR``, set by
   ``use_cache`` when the registry starts, before anything compiles), with torch's mega-cache
   (``torch.compiler.save_cache_artifacts``) saved there after each warm-up and loaded at the next start: a
   restart warms up from the cache in a fraction of the first start's time (the log says how long).

At run time a size that was not warmed up compiles on its first job (shapes then turn dynamic, so later
sizes reuse that graph); a compile error, or the recompile limit, runs that block eagerly: never a failed job.

Not done, and why:
- The VAE decoder is not compiled: it runs once per image against the denoiser's 2 x steps passes, and a
  whole-decoder compile costs more compile time (and cache) than the few per cent it saves at 512 px.
- No CUDA graphs: the residency manager (``gpu_pool/residency.py``) moves weights between the CPU and the GPU
  per job, so the addresses a captured graph replays are gone by the next job; and the sizes users ask for are
  not static. Regional compile keeps working across moves (the weights are graph inputs, not constants).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpu_pool.residency import DoesNotFit, Residency

log = logging.getLogger(__name__)

CACHE = "compile-cache"  # under [storage] data_dir
MEGA = "mega-cache.bin"  # torch.compiler's artifacts, in CACHE
MARK = "_pool_fast"  # set on each module the fast path changed: the steps done to it
WARM_WAIT = 120.0  # seconds a warm-up waits for room on a budgeted device before it is skipped
RECOMPILE_LIMIT = 16  # compiled variants per block before a new shape runs it eagerly
# Attention backends to try on CUDA, fastest first, with the compute capability each needs (16-bit only).
ATTENTION = (("_native_cudnn", (9, 0)), ("_native_flash", (8, 0)))
# Denoisers ``[pool] step_cache`` applies to (checked on the tiny models). diffusers 0.42's first-block cache
# fails on FLUX.2 (its single blocks return the text and image tokens joined, which that cache subtracts from
# the first block's pair); its TaylorSeer cache works. SD1.5's UNet takes neither.
STEP_CACHE = ("Flux2Transformer2DModel",)
CACHE_AFTER = 3  # the step cache predicts no step before this one: the first steps set the picture's layout
_cache_lock = threading.Lock()
_loaded_mega: set[Path] = set()


@dataclass(frozen=True)
class Fast:
    """``[pool]``'s fast-path keys for one load."""

    warmup_sizes: tuple[int, ...]
    step_cache: int
    cache: Path | None  # the compile cache's folder


def settings(pool: Any, device: str, cache: Path | None) -> Fast | None:
    """The fast path's settings for a load on ``device`` (``pool``: the config's ``[pool]``); None where
    ``[pool] fast`` leaves it off."""
    if not enabled(pool.fast, device):
        return None
    return Fast(tuple(pool.warmup_sizes), pool.step_cache, cache)


def enabled(mode: str, device: str) -> bool:
    """Whether ``[pool] fast = mode`` applies on ``device``."""
    return mode == "on" or (mode == "auto" and device.startswith("cuda"))


def use_cache(data_dir: Path, mode: str) -> Path | None:
    """Point inductor's cache at ``data_dir``/compile-cache and load the mega-cache saved there (once per
    process); None when the fast path is off. Call before anything compiles."""
    if mode == "off":
        return None
    folder = Path(data_dir) / CACHE
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    os.environ["TRITON_CACHE_DIR"] = str(folder / "triton")  # the GPU kernels inductor built, beside its graphs
    with _cache_lock:
        mega = folder / MEGA
        if folder not in _loaded_mega and mega.is_file():
            try:
                torch.compiler.load_cache_artifacts(mega.read_bytes())
                log.info("compile cache: loaded %s", mega)
            except Exception as e:  # a cache from another torch: the warm-up compiles anew
                log.warning("compile cache: could not load %s (%s); compiling anew", mega, e)
        _loaded_mega.add(folder)
    return folder


def save_cache(folder: Path | None) -> None:
    """Save torch's mega-cache (what this process compiled or found) into ``folder``, atomically."""
    if folder is None:
        return
    with _cache_lock:
        try:
            saved = torch.compiler.save_cache_artifacts()
            if saved is None:
                return
            tmp = folder / f".{MEGA}.{os.getpid()}"
            tmp.write_bytes(saved[0])
            tmp.replace(folder / MEGA)
        except Exception as e:
            log.warning("compile cache: could not save the mega-cache (%s); the inductor cache still serves", e)


def _never_fail_a_job() -> None:
    """A compile error runs the frame eagerly; so does a shape past the recompile limit."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    torch._dynamo.config.fail_on_recompile_limit_hit = False
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)


def apply(model: Any, step_cache: int = 0) -> list[str]:
    """The fast path on ``model``'s ``fast_modules()``; returns what was done, for the log ([] for none)."""
    done: list[str] = []
    if model.fast_modules():
        _never_fail_a_job()
    for name, module in model.fast_modules().items():
        marks = getattr(module, MARK, None)
        if marks is not None:  # a shared module: done (or undone) by the model that loaded first
            done += [f"{name}: {m}" for m in marks]
            continue
        marks = []
        setattr(module, MARK, marks)
        if _has_convs(module):
            module.to(memory_format=torch.channels_last)
            marks.append("channels_last")
        if hasattr(module, "fuse_qkv_projections") and _plain(module):
            try:
                module.fuse_qkv_projections()
                marks.append("fused qkv")
            except Exception as e:  # an architecture diffusers cannot fuse
                log.info("%s's %s: no fused qkv (%s)", model.name, name, e)
        if (backend := _attention(module, model.device, model.dtype)) is not None:
            marks.append(f"attention {backend}")
        if step_cache and type(module).__name__ in STEP_CACHE:
            from diffusers import TaylorSeerCacheConfig

            module.enable_cache(TaylorSeerCacheConfig(cache_interval=step_cache, disable_cache_before_step=CACHE_AFTER))
            marks.append(f"step cache every {step_cache}")
        elif step_cache and name in ("unet", "transformer"):
            log.info("%s: [pool] step_cache applies to FLUX.2 klein only", model.name)
        if any(type(m).__name__ in (getattr(module, "_repeated_blocks", None) or ()) for m in module.modules()):
            module.compile_repeated_blocks(fullgraph=False)
            marks.append("compiled blocks")
        elif name in ("unet", "transformer"):  # the upscaler's UNet has no transformer blocks: it runs eager
            log.info("%s's %s: no repeated blocks to compile", model.name, name)
        done += [f"{name}: {m}" for m in marks]
    return done


def undo(model: Any) -> None:
    """The compiled parts of the fast path off again on ``model``'s modules (shared ones too: they are then
    eager for every model). Fused projections and channels_last stay: plain eager torch, and undoing them
    would change the weights a residency manager holds."""
    for module in model.fast_modules().values():
        marks = getattr(module, MARK, None) or []
        if "compiled blocks" in marks:
            for sub in module.modules():
                sub._compiled_call_impl = None  # what nn.Module.compile set
        if any(m.startswith("attention ") for m in marks):
            module.set_attention_backend("native")
        if any(m.startswith("step cache") for m in marks):
            module.disable_cache()
        setattr(module, MARK, [])  # the next model on this module leaves it as it is now


def compiled(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The submodules of ``module`` that run compiled."""
    return [m for m in module.modules() if getattr(m, "_compiled_call_impl", None) is not None]


def warm_up(model: Any, sizes: tuple[int, ...], mgr: Residency | None, cache: Path | None) -> float | None:
    """The model's warm-up runs at ``sizes`` (on the device under a budget); the seconds taken, or None when
    skipped or failed (then the fast path is off for it, see the module's docstring)."""
    started = time.perf_counter()
    on_device = contextlib.nullcontext()
    if mgr is not None:
        on_device = mgr.use(model.name, model.modules().values(), timeout=WARM_WAIT)
    try:
        with on_device, torch.inference_mode():  # as a job runs (gpu_pool/scheduler.py): the same graphs
            drawn = model.warm_up(sizes)
    except (DoesNotFit, TimeoutError) as e:
        log.info("%s: warm-up skipped (%s); its first job of each size compiles", model.name,
                 str(e) or "the device stayed busy")
        return None
    except Exception as e:
        log.warning("%s: warm-up failed (%s: %s); it runs without the fast path", model.name, type(e).__name__, e,
                    exc_info=True)
        undo(model)
        return None
    seconds = time.perf_counter() - started
    save_cache(cache)
    log.info("%s: warm-up at %s took %.1f s", model.name, ", ".join(f"{s}x{s}" for s in drawn), seconds)
    return seconds


def _plain(module: torch.nn.Module) -> bool:
    """Whether its weights are plain tensors: fusing concatenates them, which a quantized tensor may not allow."""
    return all(type(p) is torch.nn.Parameter and type(p.data) is torch.Tensor and p.dtype.is_floating_point
               and p.element_size() >= 2 for p in module.parameters())


def _has_convs(module: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in module.modules())


def _attention(module: torch.nn.Module, device: str, dtype: torch.dtype) -> str | None:
    """Set the fastest attention backend that sets on ``module``; its name, or None (torch's SDPA as it is).
    Only diffusers' dispatching processors (klein's) take a backend; SD's call torch's SDPA, which picks its
    own kernel on CUDA."""
    if not (device.startswith("cuda") and dtype in (torch.float16, torch.bfloat16)
            and any(hasattr(getattr(m, "processor", None), "_attention_backend") for m in module.modules())):
        return None
    capability = torch.cuda.get_device_capability(torch.device(device))
    for backend, least in ATTENTION:
        if capability >= least:
            try:
                module.set_attention_backend(backend)
                return backend
            except Exception as e:  # its kernel is missing from this torch: the next one
                log.info("attention backend %s not available (%s)", backend, e)
    return None
