"""Count the bytes models hold, each tensor storage once.

Shared components (one Stable Diffusion base under many pipelines; FLUX.2 [klein]'s
networks under Klein and KleinInpaint; one Qwen3 as the LLM and klein's text encoder)
are found by their storage, not by name: two modules that point at the same memory are
counted once. Works for real tensors and for tensors on the ``meta`` device
(where storage identity is the parameter object itself).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def _storages(module: torch.nn.Module) -> dict[object, int]:
    out: dict[object, int] = {}
    for t in list(module.parameters()) + list(module.buffers()):
        if t.device.type == "meta":
            key: object = ("meta", id(t))
            nbytes = t.numel() * t.element_size()
        else:
            st = t.untyped_storage()
            key = (t.device.type, t.device.index, st.data_ptr())
            nbytes = st.nbytes()
        out[key] = nbytes
    return out


def storage_map(modules: Iterable[torch.nn.Module]) -> dict[object, int]:
    """Storage key -> bytes, over all ``modules`` together."""
    out: dict[object, int] = {}
    for m in modules:
        out.update(_storages(m))
    return out


def unique_bytes(modules: Iterable[torch.nn.Module]) -> int:
    """Bytes of all distinct storages the modules hold."""
    return sum(storage_map(modules).values())


def sharing(models: dict[str, list[torch.nn.Module]]) -> dict[str, tuple[int, int, list[str]]]:
    """For each model name: (its bytes, the part of them also held by another model, those models)."""
    maps = {name: storage_map(mods) for name, mods in models.items()}
    owners: dict[object, list[str]] = {}
    for name, m in maps.items():
        for key in m:
            owners.setdefault(key, []).append(name)
    out = {}
    for name, m in maps.items():
        shared = [k for k in m if len(owners[k]) > 1]
        peers = sorted({n for k in shared for n in owners[k]} - {name})
        out[name] = (sum(m.values()), sum(m[k] for k in shared), peers)
    return out


def model_bytes(models: dict[str, list[torch.nn.Module]]) -> dict[str, tuple[int, int]]:
    """For each model name: (its bytes, the part of them also held by another model)."""
    return {name: (own, shared) for name, (own, shared, _) in sharing(models).items()}
