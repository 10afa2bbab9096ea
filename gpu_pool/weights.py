"""Which files each model's loader reads, repo by repo, and which weight file to read.

The same table serves three readers, so what is fetched is exactly what is loaded:

    gpu_pool/fetch.py     downloads these files (and nothing else) from the hub
    gpu_pool/models/*     pick the weight file (and its variant) in a local folder with ``pick``
    bench/memory.py       reports the download size per repo

A weight file is chosen by preference: the ``fp16`` variant when the model runs
in 16 bits and the repo has it (SD1.5's UNet: 1.7 GB instead of 3.4 GB), else
the full file, safetensors before the legacy ``.bin``. bfloat16 takes the fp16
file too: half the download, and the cast from fp16 to bf16 loses nothing the
cast from fp32 would keep at bf16's 8 bits of mantissa.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

HALF = ("float16", "bfloat16")


@dataclass(frozen=True)
class Weights:
    """One weight file a loader reads, as the candidates a repo may hold."""

    fp16: tuple[str, ...]  # the fp16 variant files, best first
    full: tuple[str, ...]  # the full-precision files, best first
    keep_fp32: bool = False  # runs in float32 whatever the dtype (the controlnet_aux networks)

    def candidates(self, dtype: str) -> tuple[str, ...]:
        """Files to look for, best first: the variant that matches the dtype, then the other one."""
        return self.fp16 + self.full if dtype in HALF and not self.keep_fp32 else self.full + self.fp16

    def loaded_bytes(self, filename: str, size: int, dtype: str) -> int:
        """Bytes ``filename`` (``size`` bytes on disk) takes once loaded at ``dtype``.

        Full files of the seed's repos are float32; variant files are float16.
        """
        file_bytes_per_weight = 2 if filename in self.fp16 else 4
        weight_bytes = 4 if self.keep_fp32 or dtype == "float32" else 2
        return size * weight_bytes // file_bytes_per_weight


def diffusers(sub: str) -> Weights:
    """A diffusers model's weights in ``sub`` ("unet", "vae", or "" for a ControlNet repo)."""
    p = f"{sub}/" if sub else ""
    return Weights((f"{p}diffusion_pytorch_model.fp16.safetensors", f"{p}diffusion_pytorch_model.fp16.bin"),
                   (f"{p}diffusion_pytorch_model.safetensors", f"{p}diffusion_pytorch_model.bin"))


def transformers(sub: str = "") -> Weights:
    """A transformers model's weights in ``sub`` ("text_encoder", or "" for the repo's root)."""
    p = f"{sub}/" if sub else ""
    return Weights((f"{p}model.fp16.safetensors", f"{p}pytorch_model.fp16.bin"),
                   (f"{p}model.safetensors", f"{p}pytorch_model.bin"))


def raw(filename: str) -> Weights:
    """A plain checkpoint file (the controlnet_aux networks: float32 .pth, no variant)."""
    return Weights((), (filename,), keep_fp32=True)


@dataclass(frozen=True)
class Want:
    """What a loader reads from one hub repo or local folder."""

    source: str  # hub id or local folder
    files: tuple[str, ...] = ()  # small files (configs, tokenizer): fetched when the repo has them
    weights: tuple[Weights, ...] = field(default=())  # each must be there in one of its forms

    @property
    def local(self) -> bool:
        return os.path.isabs(self.source) or self.source.startswith(".")


# Configs and tokenizer/processor files a transformers repo may hold; the loaders read those present.
TRANSFORMERS_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
                      "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.json",
                      "vocab.txt", "vocab.json", "merges.txt")
# The parts of a Stable Diffusion 1.5 repo the shared base reads: not the safety checker, its
# feature extractor, nor the single-file checkpoints (v1-5-pruned*.safetensors) at the root.
SD_BASE_FILES = ("model_index.json", "scheduler/scheduler_config.json", "unet/config.json", "vae/config.json",
                 "text_encoder/config.json", *(f"tokenizer/{f}" for f in (
                     "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.json",
                     "vocab.json", "merges.txt")))
SD_BASE_WEIGHTS = (diffusers("unet"), diffusers("vae"), transformers("text_encoder"))
OPENPOSE = ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")
TRANSFORMERS_MODELS = ("ImageCaptioning", "VisualQuestionAnswering", "Text2Mask", "Image2Seg", "Image2Depth",
                       "Image2Normal")


def sd_base(source: str) -> Want:
    return Want(source, SD_BASE_FILES, SD_BASE_WEIGHTS)


def plan(name: str, source: str, base: str) -> list[Want]:
    """What the loader of model ``name`` reads: from ``source``, and from the shared SD base ``base``.

    OpenPose's hand and face networks are fetched with the body network (so a
    request for hands never waits for a download) but loaded only when asked for.
    """
    if name in ("Text2Image", "Variations"):  # the base itself (Variations: img2img over it)
        return [sd_base(source or base)]
    if name == "Upscale":  # the latent upscaler's repo is laid out like SD's, with its own networks
        return [sd_base(source)]
    if name in ("InstructPix2Pix", "Inpainting"):  # their own UNet and schedule on the base's VAE and text encoder
        return [sd_base(base), Want(source, ("unet/config.json", "scheduler/scheduler_config.json"),
                                    (diffusers("unet"),))]
    if name.endswith("Text2Image"):  # the eight ControlNets
        return [sd_base(base), Want(source, ("config.json",), (diffusers(""),))]
    if not source:  # Image2Canny: OpenCV, no weights
        return []
    if name == "Image2Line":
        return [Want(source, (), (raw("mlsd_large_512_fp32.pth"),))]
    if name in ("Image2Hed", "Image2Scribble"):
        return [Want(source, (), (raw("ControlNetHED.pth"),))]
    if name == "Image2Pose":
        return [Want(source, (), tuple(raw(f) for f in OPENPOSE))]
    # The transformers models, and any model added later that is laid out like one.
    return [Want(source, TRANSFORMERS_FILES, (transformers(),))]


# --- in a local folder --------------------------------------------------------------------


class MissingWeights(FileNotFoundError):
    """A folder or repo without a file its loader needs; the message names what to look for."""


def pick(folder: str, weights: Weights, dtype: str) -> str:
    """The file ``weights`` will be read from in ``folder``: the best candidate present."""
    for name in weights.candidates(dtype):
        if os.path.isfile(os.path.join(folder, name)):
            return name
    raise MissingWeights(f"{folder} has none of {', '.join(weights.candidates(dtype))}")


def variant(folder: str, weights: Weights, dtype: str) -> str | None:
    """The ``variant=`` argument for from_pretrained: "fp16" when the fp16 file is the one picked."""
    return "fp16" if pick(folder, weights, dtype) in weights.fp16 else None
