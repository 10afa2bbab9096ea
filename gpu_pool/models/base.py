"""What every pool model is: parameters it accepts, how it loads, how it runs.

A loader is a function ``load(spec: LoadSpec, bases: SharedBases) -> PoolModel``
listed in ``gpu_pool/models/__init__.py``. ``run`` is synchronous and is always
called on the device's worker thread, never on the event loop.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

import torch
from PIL import Image

from .shared_qwen import SharedQwen


class BadRequest(ValueError):
    """A job's input is wrong; the message says how to fix it (shown to the user)."""


class JobCancelled(Exception):
    """Raised from the progress callback when the job was cancelled."""


# progress(step, total, text=None): report a step (and, from the LLM, the next piece of its answer);
# raises JobCancelled when the job was cancelled.
Progress = Callable[..., None]


@dataclass(frozen=True)
class Param:
    """One job parameter: its type, default and allowed range."""

    type: type
    default: Any = None
    required: bool = False
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    multiple_of: int | None = None
    limit: str | None = None  # name of a [limits] key that caps max (max_steps, max_output_size)
    help: str = ""


@dataclass
class Output:
    images: list[Image.Image] = field(default_factory=list)
    text: str | None = None
    data: dict[str, Any] | None = None  # structured results (boxes, scores), sent as JSON


@dataclass(frozen=True)
class LoadSpec:
    name: str  # seed model name, e.g. "CannyText2Image"
    source: str  # a local folder (a hub id is fetched into the cache first), or "" when the model has no weights
    device: str  # resolved: "cpu", "cuda:0" ...
    dtype: torch.dtype
    sd_base: str  # local folder of the shared Stable Diffusion 1.5 base
    home: str = ""  # where the weights wait between jobs under a residency budget ("cpu"); "": on the device
    working_size: int = 512  # [limits] working_size: the SD family fits input images to it (SD1.5's 512)
    quantize: str = "none"  # [models.NAME] quantize: "none", "fp8" or "nf4" (gpu_pool/quantize.py, after the load)
    max_output_size: int = 0  # [limits] max_output_size: models that pick their own output size keep under it
    # [llm] history_tokens + [limits] llm_max_tokens: the longest chat (prompt and answer) the core sends the LLM
    chat_tokens: int = 0

    @property
    def load_device(self) -> str:
        """Where loaders put the weights: home under a budget (they move to ``device`` per job), else the device."""
        return self.home or self.device


class PoolModel:
    """Base class of loaded models. Subclasses set ``params`` and ``n_images``
    and implement ``run``; ``modules`` feeds the byte accounting; ``quantizable`` names what may be quantized."""

    name: str = ""
    params: dict[str, Param] = {}
    n_images: int | None = 0  # images the job must send (e.g. 1 image, or image + mask); None: any number
    image_names: tuple[str, ...] = ()  # what each input image is, for error messages
    draws: bool = False  # its images are drawn, not maps of the input: the safety checker sees them first
    # The params each job of a batch keeps its own (prompt, seed ...): jobs for this model whose other params
    # are the same may run as one batch (``run_batch``, ``gpu_pool/batching.py``); (): never batched.
    batch_keeps: tuple[str, ...] = ()

    def __init__(self, spec: LoadSpec):
        self.spec = spec
        self.name = spec.name
        self.device = spec.device
        self.dtype = spec.dtype

    @property
    def source(self) -> str:
        """Where its weights came from (a hub id or folder; "" for none), for the images' provenance."""
        return self.spec.source

    def modules(self) -> dict[str, torch.nn.Module]:
        """The torch modules this model holds (shared ones included), by component name."""
        return {}

    def quantizable(self) -> dict[str, torch.nn.Module]:
        """The modules its ``quantize`` key may quantize (the big ones whose weights dominate), by name;
        {}: none. The registry quantizes them after the load (``gpu_pool/quantize.py``)."""
        return {}

    def fast_modules(self) -> dict[str, torch.nn.Module]:
        """The modules the diffusion fast path speeds up (``gpu_pool/fast.py``): its denoiser ("unet",
        "transformer") and "vae"; {}: none, the model loads as it is."""
        return {}

    def warm_up(self, sizes: tuple[int, ...]) -> list[int]:
        """Short runs (2 steps, no progress) at the shapes its jobs will have for the square ``sizes``, so the
        fast path compiles them before the model is ready; returns the sizes it drew at. Only models with
        ``fast_modules`` are warmed up."""
        return []

    def prompts(self, params: dict[str, Any]) -> dict[str, Any]:
        """The prompt and negative prompt the model really gives its pipeline for ``params`` (the SD family adds
        the seed's quality words and default negative prompt), for the images' provenance; {} for none."""
        return {}

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        raise NotImplementedError

    def run_batch(self, batch: list[dict[str, Any]], progress: Progress) -> list[Output]:
        """Several jobs (their params, the same but for ``batch_keeps``) in one run, an output per job in
        order; only for a model with ``batch_keeps``, whose jobs take no image. ``progress`` is the batch's."""
        raise NotImplementedError

    def working_bytes(self) -> int:
        """Bytes a job holds on the device besides the weights, which the residency budget counts while it runs
        (the LLM's KV cache); 0: only activations, which the budget's reserve is for."""
        return 0

    def tokens_per_s(self) -> float | None:
        """A text generator's recent decoding speed, for /models; None for the others, and before its first job."""
        return None


class SharedBases:
    """One Stable Diffusion 1.5 base per (source, device, dtype), loaded on first use
    (onto ``home`` when the device has a residency budget); FLUX.2 [klein]'s base the same way
    (``get(..., loader=)``), and the Qwen3 models its text encoder and the LLM may share (``qwen``).

    Thread-safe: loaders run on worker threads. ``get`` returns the base
    pipeline (a ``StableDiffusionPipeline``); every SD-family model on that
    device builds its pipeline from it with ``from_pipe(base, dtype=base.unet.dtype)``
    or from its components, so the weights exist once.
    """

    def __init__(self, loader: Callable[[str, str, torch.dtype], Any]):
        self._loader = loader
        self._bases: dict[tuple[str, str, torch.dtype], Any] = {}
        self._lock = threading.Lock()
        self.qwen = SharedQwen()

    def get(self, source: str, device: str, dtype: torch.dtype, home: str = "",
            loader: Callable[[str, str, torch.dtype], Any] | None = None) -> Any:
        """The base pipeline from ``source``, loaded by ``loader`` (the SD1.5 loader unless given) the first time."""
        key = (source, device, dtype)  # by the device it runs on: a cpu model never shares a cuda model's base
        with self._lock:
            if key not in self._bases:
                self._bases[key] = (loader or self._loader)(source, home or device, dtype)
            return self._bases[key]

    def holds(self, source: str, device: str, dtype: torch.dtype) -> bool:
        """Whether that base is loaded already (a model built on it loads only its own part)."""
        return (source, device, dtype) in self._bases

    def module_ids(self) -> set[int]:
        """Ids of the modules of every base held."""
        with self._lock:
            return {id(m) for base in self._bases.values() for m in base.components.values()
                    if isinstance(m, torch.nn.Module)} | self.qwen.module_ids()

    def drop_unused(self, in_use: set[int]) -> None:
        """Forget bases none of whose modules a loaded model holds (``in_use``: ids of modules)."""
        qwen = self.qwen.module_ids()  # another model may hold a base's Qwen3 (the LLM): that keeps only the Qwen3
        with self._lock:
            for key, base in list(self._bases.items()):
                mods = [m for m in base.components.values() if isinstance(m, torch.nn.Module) and id(m) not in qwen]
                if not any(id(m) in in_use for m in mods):
                    del self._bases[key]
        self.qwen.drop_unused(in_use)


def no_progress(*args: Any, **kwargs: Any) -> None:
    """The progress of a run nobody watches (a warm-up)."""


def warm_up_inputs(side: int) -> list[Image.Image]:
    """A warm-up's input images at ``side`` x ``side``: a grey picture, and a mask whose white square (the part
    to repaint) is its middle half, for the models that take one."""
    mask = Image.new("L", (side, side), 0)
    mask.paste(255, (side // 4, side // 4, side * 3 // 4, side * 3 // 4))
    return [Image.new("RGB", (side, side), (128, 128, 128)), mask]


def embed_once(embedding: torch.nn.Module) -> None:
    """Make a denoiser's timestep ``embedding`` (SD1.5's UNet ``time_embedding``, klein's
    ``time_guidance_embed``) run on one row when every row of its inputs is the same, as in each step of a
    batch (``gpu_pool/batching.py``): the denoiser then broadcasts the one row. Besides sparing the work, this
    keeps a batch's images byte-identical on the CPU to its jobs run alone: a matrix product with a handful of
    rows rounds differently for 2 rows than for 8 in MKL."""
    def hook(module: torch.nn.Module, args: tuple) -> tuple | None:
        rows = [a for a in args if isinstance(a, torch.Tensor)]
        if not rows or rows[0].shape[0] < 2:
            return None
        if not all(a.shape[0] == rows[0].shape[0] and torch.equal(a, a[:1].expand_as(a)) for a in rows):
            return None
        return tuple(a[:1] if isinstance(a, torch.Tensor) else a for a in args)

    embedding.register_forward_pre_hook(hook)


def warm_up_batch(model: PoolModel, side: int) -> None:
    """A batch of two drawings at ``side`` x ``side`` for a model that batches (``batch_keeps``): the fast path's
    compile then takes the batch size as dynamic, so a batch of any size at a warmed-up size finds it compiled."""
    if model.batch_keeps:
        params = check_params(model, {"prompt": "a warm-up", "steps": 2, "seed": 0, "width": side, "height": side}, {})
        model.run_batch([params, params], no_progress)


def check_params(model: PoolModel, params: dict[str, Any], limits: dict[str, int]) -> dict[str, Any]:
    """Validate job ``params`` against ``model.params``; returns them with defaults filled.

    Raises BadRequest with a message that names the parameter and its allowed range.
    """
    unknown = sorted(set(params) - set(model.params))
    if unknown:
        raise BadRequest(f"{model.name} does not take '{unknown[0]}'; it takes: {', '.join(model.params) or 'nothing'}")
    out: dict[str, Any] = {}
    for key, p in model.params.items():
        if key not in params or params[key] is None:
            if p.required:
                raise BadRequest(f"{model.name} needs '{key}'" + (f" ({p.help})" if p.help else ""))
            default = p.default
            if p.limit in limits and isinstance(default, (int, float)) and default > limits[p.limit]:
                default = limits[p.limit]  # the seed's default above what this bot allows: use the cap
            out[key] = default
            continue
        value = params[key]
        if p.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, p.type) or (isinstance(value, bool) and p.type is not bool):
            raise BadRequest(f"'{key}' must be {p.type.__name__}, got {value!r}")
        hi = p.max
        if p.limit and p.limit in limits:
            hi = limits[p.limit] if hi is None else min(hi, limits[p.limit])
        if (p.min is not None and value < p.min) or (hi is not None and value > hi):
            raise BadRequest(f"'{key}' must be between {_num(p.min)} and {_num(hi)}, got {value}")
        if p.multiple_of and value % p.multiple_of:
            raise BadRequest(f"'{key}' must be a multiple of {p.multiple_of}, got {value}")
        if p.choices and value not in p.choices:
            raise BadRequest(f"'{key}' must be one of {', '.join(map(str, p.choices))}, got {value!r}")
        if p.type is str and not value.strip() and p.required:
            raise BadRequest(f"'{key}' must not be empty")
        out[key] = value
    return out


def _num(x: float | None) -> str:
    return "any" if x is None else (str(int(x)) if float(x).is_integer() else str(x))


# Parameters most diffusion models share, with the seed's defaults where it had them.
def steps(default: int) -> Param:
    return Param(int, default, min=1, limit="max_steps", help="diffusion steps")


def size(default: int | None = None) -> Param:
    return Param(int, default, min=64, limit="max_output_size", multiple_of=8, help="pixels")


def guidance(default: float) -> Param:
    return Param(float, default, min=0.0, max=30.0, help="how strongly to follow the prompt")


PROMPT = Param(str, required=True, help="what to draw")
NEGATIVE = Param(str, "", help="what to avoid")
SEED = Param(int, None, min=0, max=2**32 - 1, help="random seed for a reproducible result")
