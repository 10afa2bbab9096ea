"""Weights in fewer bytes: a model's ``quantize = "fp8" | "nf4"`` applied to its quantizable modules.

The registry calls :func:`apply` on the loading thread right after a load, before the residency
manager adopts the weights, so the budget counts the bytes the quantized weights really hold.

    fp8  CUDA, compute capability >= 8.9, torchao:  torchao float8, weights and activations (dynamic
         scales, per row): half the bytes of bfloat16 and fp8 matmuls.
         elsewhere (older GPUs, CPU):  diffusers' layerwise casting, fp8 storage cast to the model's
         dtype layer by layer for the forward: half the bytes, no speed-up.
    nf4  CUDA, bitsandbytes:  every nn.Linear but ``lm_head`` becomes :class:`NF4Linear` (4-bit
         NormalFloat, double quantization, bf16 compute): 0.52 bytes a weight, about a quarter of bfloat16.

What the device cannot run falls back, nf4 -> fp8 -> none, with one warning naming the model, what
was asked, what is used and why; a load never fails for it. A module two models hold (one Qwen3 is
the LLM and FLUX.2 klein's text encoder) is quantized once: it is marked, and the second model finds
the mark. Not checked here on a GPU (these machines have none): torchao float8 and NF4 on CUDA.
"""

from __future__ import annotations

import importlib.util
import logging
import re

import torch

from gpu_pool import accounting

log = logging.getLogger(__name__)
MARK = "_vchat_quantized"  # on a module quantized already: what was used ("fp8 (torchao)", ...)
NF4_BLOCK = 64  # weights per absmax (bitsandbytes' default blocksize for 4-bit)
KEEP = re.compile(r"(^|\.)lm_head$")  # left as loaded (nf4, torchao): tied to Qwen3's embeddings, it would untie

FP8_TORCHAO, FP8_CAST, NF4 = "fp8 (torchao float8)", "fp8 (layerwise casting)", "nf4 (bitsandbytes)"


def choose(wanted: str, device: str) -> tuple[str, str]:
    """(the method used on ``device`` for ``wanted``, why it is not what was wanted; "" when it is)."""
    if wanted == "nf4":
        if not device.startswith("cuda"):
            used, why = choose("fp8", device)
            return used, f"bitsandbytes 4-bit runs on CUDA GPUs only, not on {device}" + (f"; {why}" if why else "")
        if not _installed("bitsandbytes"):
            used, why = choose("fp8", device)
            return used, "bitsandbytes is not installed (the quant extra)" + (f"; {why}" if why else "")
        return NF4, ""
    if wanted == "fp8":
        if device.startswith("mps"):
            return "none", "mps has no float8 dtype"
        if not device.startswith("cuda"):
            return FP8_CAST, ""  # the CPU: fp8 storage is what was asked; there are no fp8 matmuls to use
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            return FP8_CAST, ""  # the documented path for older GPUs, not a fallback
        if not _installed("torchao"):
            return FP8_CAST, "torchao is not installed (the quant extra), so no fp8 matmuls"
        return FP8_TORCHAO, ""
    return "none", ""


def apply(name: str, wanted: str, modules: dict[str, torch.nn.Module], device: str, dtype: torch.dtype) -> str:
    """Quantize ``modules`` (a model's ``quantizable()``) as ``wanted`` for ``device``; returns what was used.

    ``dtype`` is the model's: layerwise casting computes in it, NF4 in bfloat16. Warns once when the
    device cannot run ``wanted`` (or the model has nothing to quantize) and uses what it can.
    """
    if wanted == "none":
        return "none"
    if not modules:
        log.warning("%s: quantize = %r, but %s has no modules that may be quantized; using none", name, wanted, name)
        return "none"
    method, why = choose(wanted, device)
    if why:
        log.warning("%s: quantize = %r cannot run on %s: %s; using %s", name, wanted, device, why, method)
    used = method
    for part, module in modules.items():
        done = getattr(module, MARK, None)
        if done is not None:  # shared with a model loaded before: quantized once, by it
            log.info("%s: %s is shared and already quantized (%s)", name, part, done)
            continue
        try:
            _quantize(module, method, device, dtype)
            setattr(module, MARK, method)
        except Exception as e:  # a quantization that fails must not fail the load: each layer works either way
            partly = _touched(module)
            log.warning("%s: quantize = %r failed on its %s (%s: %s); %s", name, wanted, part, type(e).__name__, e,
                        f"some layers are {method}, the others as loaded" if partly else "using none")
            used = f"{method}, in part" if partly else "none"
            setattr(module, MARK, used)
    return used


def _quantize(module: torch.nn.Module, used: str, device: str, dtype: torch.dtype) -> None:
    if used == FP8_CAST:
        from diffusers.hooks import apply_layerwise_casting

        apply_layerwise_casting(module, storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    elif used == FP8_TORCHAO:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
                  filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and not KEEP.search(fqn))
    elif used == NF4:
        to_nf4(module, device)


def _touched(module: torch.nn.Module) -> bool:
    """Whether some of ``module`` was changed before a failure."""
    return any(p.dtype == torch.float8_e4m3fn or accounting.wraps(p) for p in module.parameters()) or any(
        isinstance(m, NF4Linear) for m in module.modules())


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


# --- NF4 ----------------------------------------------------------------------------------------


class NF4Linear(torch.nn.Module):
    """An ``nn.Linear`` in bitsandbytes NF4 with double quantization (``Linear4bit``'s default): 4-bit
    weights, an 8-bit absmax per 64 of them, a float32 absmax per 256 of those. Every tensor is a plain
    buffer, so the residency manager moves and counts them like any weight (bitsandbytes' own
    ``Params4bit`` keeps its quantization state outside the module's tensors)."""

    def __init__(self, linear: torch.nn.Linear, device: str, compute_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        home, n = linear.weight.device, linear.weight.numel()
        if home.type == "meta":  # counted, not run (bench/memory.py): the tensors bitsandbytes would give
            blocks = -(-n // NF4_BLOCK)
            held = {"packed": torch.empty(((n + 1) // 2, 1), dtype=torch.uint8), "code": torch.empty(16),
                    "absmax": torch.empty(blocks, dtype=torch.uint8), "offset": torch.empty(()),
                    "absmax2": torch.empty(-(-blocks // 256)), "code2": torch.empty(256)}
            held = {k: t.to("meta", torch.uint8 if t.dtype == torch.uint8 else torch.float32) for k, t in held.items()}
        else:
            from bitsandbytes import functional as bnb_f

            packed, state = bnb_f.quantize_4bit(linear.weight.data.to(device, compute_dtype), blocksize=NF4_BLOCK,
                                                quant_type="nf4", compress_statistics=True)
            held = {"packed": packed, "code": state.code, "absmax": state.absmax, "offset": state.offset,
                    "absmax2": state.state2.absmax, "code2": state.state2.code}
        for key, t in held.items():
            self.register_buffer(key, t.to(home))
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.compute_dtype = compute_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import bitsandbytes as bnb
        from bitsandbytes.functional import QuantState

        nested = QuantState(self.absmax2, code=self.code2, blocksize=256, dtype=torch.float32)
        state = QuantState(self.absmax, shape=torch.Size((self.out_features, self.in_features)), code=self.code,
                           blocksize=NF4_BLOCK, quant_type="nf4", dtype=self.compute_dtype, offset=self.offset,
                           state2=nested)
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        return bnb.matmul_4bit(x.to(self.compute_dtype), self.packed, quant_state=state, bias=bias).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nf4"


def to_nf4(module: torch.nn.Module, device: str) -> None:
    """Replace every ``nn.Linear`` under ``module`` (but ``lm_head``) by an :class:`NF4Linear`, in place;
    quantized on ``device``, kept where the weights were."""
    for fqn, linear in [(n, m) for n, m in module.named_modules() if type(m) is torch.nn.Linear]:
        if not fqn or KEEP.search(fqn):
            continue
        parent_name, _, child = fqn.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, NF4Linear(linear, device))
