"""Loading one network from a local folder, loudly.

Loaders only ever read local folders (``gpu_pool/fetch.py`` turns hub ids into
the cached snapshot first), pick the weight file with ``gpu_pool.weights``, and
load through :func:`checked`, which fails the load when the checkpoint does not
hold the network's weights: diffusers and transformers only warn, then run on
randomly initialised weights and make noise images.
"""

from __future__ import annotations

import os
import re
from typing import Any
from collections.abc import Iterable

import torch

from gpu_pool import weights as w

from .base import LoadSpec, PoolModel


class WeightsMismatch(RuntimeError):
    """A checkpoint whose weights do not fit the network; the message says which and what to check."""


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def checked(cls: type, folder: str, dtype: torch.dtype, weights: w.Weights, subfolder: str = "",
            allow_missing: Iterable[str] = (), **kwargs: Any) -> Any:
    """``cls.from_pretrained(folder)`` in ``dtype`` from the file ``weights`` picks, failing on missing weights.

    ``allow_missing``: regexes of weights the checkpoint may lack because the network never uses them.
    """
    where = os.path.join(folder, subfolder) if subfolder else folder
    variant = w.variant(folder, weights, dtype_name(dtype)) if weights.fp16 else None
    sub = {"subfolder": subfolder} if subfolder else {}
    model, info = cls.from_pretrained(folder, dtype=dtype, variant=variant, output_loading_info=True, **sub, **kwargs)
    patterns = [re.compile(p) for p in allow_missing]
    missing = sorted(k for k in info.get("missing_keys", ()) if not any(p.match(k) for p in patterns))
    mismatched = list(info.get("mismatched_keys", ()))
    if missing or mismatched:
        total = len(model.state_dict())
        what = (f"{len(missing)} of its {total} weights are missing (e.g. {', '.join(missing[:3])})" if missing
                else f"{len(mismatched)} weights have the wrong shape (e.g. {mismatched[0]})")
        raise WeightsMismatch(f"{where} is not a {type(model).__name__} checkpoint: {what}. Check the model's source "
                              "in config.toml; running it would give noise.")
    return model


class TransformersModel(PoolModel):
    """A transformers processor and model from one source, the weights checked (``checked``), in eval mode:
    subclasses name the two classes and write ``run``."""

    processor_class: type
    model_class: type

    def __init__(self, spec: LoadSpec):
        super().__init__(spec)
        self.processor = self.processor_class.from_pretrained(spec.source)
        model = checked(self.model_class, spec.source, spec.dtype, w.transformers())
        self.model = model.to(spec.load_device).eval()

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}
