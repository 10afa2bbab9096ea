"""Will the configured models fit their devices? Said once at start-up, before an out-of-memory can.

The pool adds up the weights each device will hold (each file once: the shared
SD base counts once however many tools use it), at the dtype they load in,
and the built-in LLM's KV cache for the longest chat the core sends it
(``chat_tokens``; the residency budget counts it the same way while the LLM
answers), and compares that with the device's free memory. A job's
activations (about 1-3 GB for SD1.5 at 512-1024 px) and the CUDA context come
on top, so a device whose weights take most of its memory warns too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import TYPE_CHECKING, Any

import settings
from gpu_pool import weights as w
from settings.units import hub_size

if TYPE_CHECKING:
    import torch

    from gpu_pool.fetch import Fetcher

log = logging.getLogger(__name__)
HEADROOM = 0.85  # weights may take this share of free memory; the rest is for activations


def chat_tokens(config: settings.Config) -> int:
    """The longest chat the core sends the LLM, prompt and answer: the one its KV cache is counted for."""
    return config.llm.history_tokens + config.limits.llm_max_tokens


async def log_fit(config: settings.Config, fetcher: Fetcher) -> None:
    """Log each device's weight bytes (and the LLM's KV cache) against its free memory, warning when they
    will not fit."""
    per_device: dict[str, dict[str, int]] = {}  # device -> model -> weight bytes
    files: dict[str, dict[tuple[str, str], int]] = {}  # device -> (repo, file) -> bytes, each file once
    caches: dict[str, dict[str, int]] = {}  # device -> model -> KV cache bytes (the LLM's)
    for name, cfg in config.models.items():
        dev, dt = settings.resolve_device(cfg.device), cfg.resolved_dtype()
        if device_problem(dev):  # its load fails and says why
            continue
        for want in w.plan(name, cfg.source, config.pool.sd_base):
            d = await fetcher.listed(want, dt)
            for f, b in d.weight_bytes().items():
                files.setdefault(dev, {})[(want.source, f)] = b
                per_device.setdefault(dev, {}).setdefault(name, 0)
                per_device[dev][name] += b
        if name == "LLM" and (kv := await asyncio.to_thread(_cache_bytes_at, cfg.source, chat_tokens(config), dt)):
            caches.setdefault(dev, {})[name] = kv  # on the device while it answers
    for dev, models in per_device.items():
        budget = config.residency.budget if config.residency.applies_to(dev) else 0
        level, text = report(dev, models, sum(files[dev].values()), free_memory(dev), budget, caches.get(dev, {}))
        if quantized := [n for n in models if config.models[n].quantize != "none"]:
            text += f" (file sizes: quantize will hold {', '.join(quantized)} in fewer bytes)"
        log.log(level, text)


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot hold models on this machine; None when it can."""
    import torch

    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        count = torch.cuda.device_count()
        if index >= count:
            return f"{device} does not exist on the pool's machine ({count} GPU(s) found)."
    elif device == "mps" and not torch.backends.mps.is_available():
        return "mps is not available on the pool's machine."
    return None


def cache_bytes(config: dict[str, Any], tokens: int, dtype: torch.dtype) -> int:
    """Bytes of the LLM's static KV cache for one chat of ``tokens`` tokens, from its config.json (a vision
    LLM's: its ``text_config``): a key and a value for each layer, KV head and token, ``head_dim`` numbers each,
    at the model's dtype (Qwen3-4B in bfloat16: 36 x 2 x 8 x 128 x 2 bytes, 144 KiB a token, 0.6 GB for 4k)."""
    text = config.get("text_config") or config
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    kv_heads = text.get("num_key_value_heads") or text["num_attention_heads"]
    return text["num_hidden_layers"] * 2 * kv_heads * head_dim * tokens * dtype.itemsize


def _cache_bytes_at(source: str, tokens: int, dtype: str) -> int:
    """``cache_bytes`` of the LLM at ``source`` (a folder or a hub id) before it loads, from its config.json in
    the folder or the local hub cache; 0 before the first download (the estimate never downloads: the fetcher
    does, once). Plain JSON: importing transformers here, beside the loading thread, would race its lazy imports."""
    import torch
    from huggingface_hub import try_to_load_from_cache

    path = os.path.join(source, "config.json") if os.path.isdir(source) else try_to_load_from_cache(source,
                                                                                                    "config.json")
    if not isinstance(path, str) or not os.path.isfile(path):
        log.info("the LLM's KV cache is left out of the estimate: %s has no config.json here yet", source)
        return 0
    try:
        with open(path, encoding="utf-8") as f:
            return cache_bytes(json.load(f), tokens, getattr(torch, dtype))
    except (OSError, ValueError, KeyError, TypeError) as e:  # an estimate: it never stops the pool
        log.info("the LLM's KV cache is left out of the estimate: %s", e)
        return 0


def free_memory(device: str) -> int | None:
    """Free bytes on ``device`` now; None where that cannot be asked (mps)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(int(device.split(":")[1]) if ":" in device else 0)[0]
    if device == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def report(device: str, models: dict[str, int], total: int, free: int | None,
           budget: int = 0, caches: dict[str, int] | None = None) -> tuple[int, str]:
    """A log level and line: ``models`` (name -> its weight bytes, shared ones included) need ``total``
    bytes of weights on ``device``, and ``caches`` (name -> its KV cache's bytes) besides, which has ``free``
    bytes free, or a residency ``budget``."""
    caches = caches or {}
    total += sum(caches.values())
    parts = ", ".join(f"{n} {hub_size(b)}" + (f" + {hub_size(caches[n])} KV cache" if caches.get(n) else "")
                      for n, b in models.items() if b)
    need = (f"{device}: the configured models need about {hub_size(total)} of weights"
            f"{' and KV cache' if caches else ''} ({parts or 'none'})")
    if budget and free is not None and budget > free:
        return logging.WARNING, (f"{need}; they take turns under a {hub_size(budget)} residency budget, but only "
                                 f"{hub_size(free)} is free there: lower [residency] budget in config.toml.")
    if budget:
        return logging.INFO, f"{need}; they take turns under the {hub_size(budget)} residency budget"
    if free is None:
        return logging.INFO, need
    if total <= free * HEADROOM:
        return logging.INFO, f"{need}; {hub_size(free)} is free"
    suggest = max(1, int(free * 0.7 / 2**30))
    return logging.WARNING, (f"{need} but only {hub_size(free)} is free, and jobs need working memory on top: "
                             f"they will not all fit. Set [residency] budget = \"{suggest}GiB\" in config.toml so "
                             "they take turns on the device, or move some models to another device.")
