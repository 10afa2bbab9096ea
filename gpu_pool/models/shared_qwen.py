"""One Qwen3 held once: the built-in LLM and FLUX.2 [klein]'s text encoder, when their weights are the same.

FLUX.2 [klein] 4B reads its prompts with a whole ``Qwen3ForCausalLM`` holding Qwen3-4B's weights, and
Qwen3-4B is also the modern profile's LLM: 7.5 GiB in bfloat16 that need not be there twice.
:class:`SharedQwen` (one per pool, on :class:`~gpu_pool.models.base.SharedBases`) holds the Qwen3 models
loaded per (device, dtype), each with the folder its weights came from. Whichever of the LLM and klein
loads first loads its Qwen3; the second compares its own folder's weights with the held ones
(:func:`compare`) and takes the held object when they are the same, or loads its own and logs why not.

The same means the same network: the configs agree on everything the forward pass reads, and every
tensor, as loaded in the job's dtype, is equal. The files are compared, not the held module (which the
quantization may have changed since): first by their hub hashes (a snapshot's files are links to blobs
named by their SHA-256, so the same file twice costs nothing), else tensor by tensor, streamed with
``safetensors.safe_open`` (Qwen3-4B's three shards and klein's two hold the same tensors split
differently: reading both takes about as long as loading them once). A verdict is kept per pair of
files (path, size, modification time) for the life of the process: a reload does not compare again.

What sharing asks of the code (``gpu_pool/models/flux2.py``, ``llm.py``): the pipeline never casts,
offloads nor compiles its text encoder (``pipe.to(dtype)`` and ``enable_model_cpu_offload`` would reach
the chat model), and the two never run at once: both are on one device, whose jobs run one at a time
(``gpu_pool/scheduler.py``). The LLM keeps its own generation settings (``generation_config.json``) and
tokenizer, the pipeline its own tokenizer: only the network is shared.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gpu_pool import weights as w

log = logging.getLogger(__name__)
QWEN3 = w.transformers(full_is_16_bit=True)  # Qwen's repos ship bfloat16 weights, in shards with an index
# What the forward pass reads from a Qwen3 config; ids of special tokens, dtype and names may differ.
FORWARD_KEYS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act", "rms_norm_eps",
                "rope_parameters", "attention_bias", "tie_word_embeddings", "use_sliding_window", "sliding_window",
                "layer_types")


@dataclass
class _Held:
    folder: str  # where its weights came from (its config.json and checkpoint)
    model: torch.nn.Module
    who: str  # the pool model that loaded it, for the log


class SharedQwen:
    """The Qwen3 networks loaded, per (device, dtype); thread-safe."""

    def __init__(self):
        self._held: dict[tuple[str, torch.dtype], list[_Held]] = {}
        self._lock = threading.Lock()

    def get(self, folder: str, device: str, dtype: torch.dtype, load: Callable[[], torch.nn.Module],
            who: str) -> torch.nn.Module:
        """The Qwen3 whose weights are in ``folder``, for model ``who`` on ``device`` in ``dtype``: a held one
        with the same weights, or ``load()`` (which returns it on its device, in eval mode)."""
        folder = os.path.abspath(folder)
        with self._lock:
            held = self._held.setdefault((device, dtype), [])
            for h in held:
                if h.folder == folder:
                    return h.model
            for h in held:
                try:
                    why = compare(folder, h.folder, dtype)
                except (OSError, ValueError) as e:  # a folder gone from the cache, a broken index: load anew
                    why = f"their weights could not be compared ({type(e).__name__}: {e})"
                if why is None:
                    log.info("%s shares the Qwen3 that %s loaded (%s): the weights are the same, held once", who,
                             h.who, h.folder)
                    held.append(_Held(folder, h.model, who))
                    return h.model
                log.warning("%s loads its own Qwen3 (%s), not sharing %s's (%s): %s", who, folder, h.who, h.folder,
                            why)
            model = load()
            held.append(_Held(folder, model, who))
            return model

    def module_ids(self) -> set[int]:
        with self._lock:
            return {id(h.model) for held in self._held.values() for h in held}

    def drop_unused(self, in_use: set[int]) -> None:
        """Forget the Qwen3s no loaded model holds (``in_use``: ids of modules)."""
        with self._lock:
            for key, held in self._held.items():
                self._held[key] = [h for h in held if id(h.model) in in_use]


# --- comparing two checkpoints ------------------------------------------------------------------

_verdicts: dict[tuple, str | None] = {}
_verdicts_lock = threading.Lock()


def compare(a: str, b: str, dtype: torch.dtype) -> str | None:
    """None when folders ``a`` and ``b`` hold the same Qwen3 once loaded in ``dtype``, else why not (a phrase)."""
    files_a, files_b = _checkpoint(a, dtype), _checkpoint(b, dtype)
    if files_a is None or files_b is None:
        return f"{a if files_a is None else b} holds no safetensors checkpoint to compare"
    key = (_identity(a, files_a), _identity(b, files_b), dtype)
    with _verdicts_lock:
        if key in _verdicts:
            return _verdicts[key]
    verdict = _compare(a, b, files_a, files_b, dtype)
    with _verdicts_lock:
        _verdicts[key] = _verdicts[key[1], key[0], dtype] = verdict
    return verdict


def _compare(a: str, b: str, files_a: dict[str, str], files_b: dict[str, str], dtype: torch.dtype) -> str | None:
    from safetensors import safe_open

    config_a, config_b = _forward_config(a), _forward_config(b)
    for k in FORWARD_KEYS:
        if config_a.get(k) != config_b.get(k):
            return f"their configs differ in {k} ({config_a.get(k)!r} and {config_b.get(k)!r})"
    if _digests(files_a) is not None and _digests(files_a) == _digests(files_b):
        return None  # the same files (the same hub blobs)
    tied = {"lm_head.weight"} if config_a.get("tie_word_embeddings") else set()
    names_a, names_b = set(files_a) - tied, set(files_b) - tied
    if names_a != names_b:
        only = sorted(names_a ^ names_b)[0]
        return f"{only} is in one checkpoint only"
    for name in sorted(names_a):
        with safe_open(files_a[name], "pt") as fa, safe_open(files_b[name], "pt") as fb:
            ta, tb = fa.get_tensor(name), fb.get_tensor(name)
        if ta.shape != tb.shape:
            return f"{name} has the shape {tuple(ta.shape)} in one and {tuple(tb.shape)} in the other"
        if not torch.equal(ta.to(dtype), tb.to(dtype)):
            return f"tensor {name} differs"
    return None


def _forward_config(folder: str) -> dict:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder).to_dict()


def _checkpoint(folder: str, dtype: torch.dtype) -> dict[str, str] | None:
    """Tensor name -> the safetensors file that holds it, in ``folder``'s checkpoint (one file or shards);
    None for a legacy .bin checkpoint (never shared)."""
    from safetensors import safe_open

    picked = w.pick(folder, QWEN3, str(dtype).removeprefix("torch."))
    if ".bin" in picked:
        return None
    if w.is_index(picked):
        with open(os.path.join(folder, picked)) as f:
            return {k: os.path.join(folder, v) for k, v in json.load(f)["weight_map"].items()}
    path = os.path.join(folder, picked)
    with safe_open(path, "pt") as f:
        return {k: path for k in f.keys()}


def _identity(folder: str, files: dict[str, str]) -> tuple:
    """What the verdict on ``folder`` depends on: its config and checkpoint files, as they are on disk."""
    paths = sorted({os.path.join(folder, "config.json"), *files.values()})
    return tuple((p, (s := os.stat(p)).st_size, s.st_mtime_ns) for p in paths)


def _digests(files: dict[str, str]) -> tuple | None:
    """Each tensor's file as its SHA-256, where the files are hub blobs (a snapshot's links); else None."""
    out = []
    for name, path in sorted(files.items()):
        real = os.path.realpath(path)
        if os.path.basename(os.path.dirname(real)) != "blobs":
            return None
        out.append((name, os.path.basename(real)))
    return tuple(out)
