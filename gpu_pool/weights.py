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

A checkpoint too big for one file is sharded: an index (``model.safetensors.index.json``)
names the shards that hold each weight. The index is the candidate picked; the
shards it names are fetched with it (``shards``), and from_pretrained reads them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

HALF = ("float16", "bfloat16")


@dataclass(frozen=True)
class Weights:
    """One weight file a loader reads, as the candidates a repo may hold."""

    fp16: tuple[str, ...]  # the fp16 variant files (or their shards' index), best first
    full: tuple[str, ...]  # the full files (or their shards' index), best first
    keep_fp32: bool = False  # runs in float32 whatever the dtype (the controlnet_aux networks)
    full_is_16_bit: bool = False  # the full files hold 16-bit weights (today's LLMs ship bfloat16)

    def candidates(self, dtype: str) -> tuple[str, ...]:
        """Files to look for, best first: the variant that matches the dtype, then the other one."""
        return self.fp16 + self.full if dtype in HALF and not self.keep_fp32 else self.full + self.fp16

    def loaded_bytes(self, filename: str, size: int, dtype: str) -> int:
        """Bytes a file picked as ``filename`` (``size`` bytes on disk; a shard of it when it is an index)
        takes once loaded at ``dtype``. Full files of the seed's repos are float32; variant files are float16.
        """
        file_bytes_per_weight = 2 if filename in self.fp16 or self.full_is_16_bit else 4
        weight_bytes = 4 if self.keep_fp32 or dtype == "float32" else 2
        return size * weight_bytes // file_bytes_per_weight


def _files(p: str, safetensors: str, pickled: str, **kw) -> Weights:
    """A checkpoint in folder prefix ``p``: one file or an index of shards, each in safetensors (named
    ``safetensors``.safetensors) or .bin (``pickled``.bin), the fp16 variant named as diffusers and transformers
    name it (``_add_variant``: model.fp16.safetensors, model.safetensors.index.fp16.json)."""
    def forms(variant: str) -> tuple[str, ...]:
        return (f"{p}{safetensors}{variant}.safetensors", f"{p}{safetensors}.safetensors.index{variant}.json",
                f"{p}{pickled}{variant}.bin", f"{p}{pickled}.bin.index{variant}.json")

    return Weights(forms(".fp16"), forms(""), **kw)


def diffusers(sub: str, full_is_16_bit: bool = False) -> Weights:
    """A diffusers model's weights in ``sub`` ("unet", "vae", or "" for a ControlNet repo)."""
    return _files(f"{sub}/" if sub else "", "diffusion_pytorch_model", "diffusion_pytorch_model",
                  full_is_16_bit=full_is_16_bit)


def transformers(sub: str = "", full_is_16_bit: bool = False) -> Weights:
    """A transformers model's weights in ``sub`` ("text_encoder", or "" for the repo's root)."""
    return _files(f"{sub}/" if sub else "", "model", "pytorch_model", full_is_16_bit=full_is_16_bit)


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
# A processor reads its chat template from chat_template.jinja, or the legacy chat_template.json
# (Qwen/Qwen3-VL-2B-Instruct's): without it a chat model cannot chat. A video-capable processor
# (Qwen3-VL's) reads video_preprocessor_config.json; without it transformers falls back to the
# image processor's settings, which are not Qwen3-VL's for video.
TRANSFORMERS_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
                      "video_preprocessor_config.json", "chat_template.jinja", "chat_template.json",
                      "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.json",
                      "vocab.txt", "vocab.json", "merges.txt")
# The parts of a Stable Diffusion 1.5 repo the shared base reads: not the safety checker, its
# feature extractor, nor the single-file checkpoints (v1-5-pruned*.safetensors) at the root.
SD_BASE_FILES = ("model_index.json", "scheduler/scheduler_config.json", "unet/config.json", "vae/config.json",
                 "text_encoder/config.json", *(f"tokenizer/{f}" for f in (
                     "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.json",
                     "vocab.json", "merges.txt")))
SD_BASE_WEIGHTS = (diffusers("unet"), diffusers("vae"), transformers("text_encoder"))
# FLUX.2 [klein]'s repos (black-forest-labs/FLUX.2-klein-4B): a diffusers pipeline in bfloat16, the text encoder
# a Qwen3 in two shards, the tokenizer with Qwen3's chat_template.jinja. Not the root's single-file checkpoint
# (flux-2-klein-4b.safetensors, the transformer again for ComfyUI) nor the sample pictures.
KLEIN_FILES = ("model_index.json", "scheduler/scheduler_config.json", "transformer/config.json", "vae/config.json",
               "text_encoder/config.json", "text_encoder/generation_config.json", *(f"tokenizer/{f}" for f in (
                   "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.json",
                   "vocab.json", "merges.txt", "chat_template.jinja")))
KLEIN_WEIGHTS = (diffusers("transformer", full_is_16_bit=True), diffusers("vae", full_is_16_bit=True),
                 transformers("text_encoder", full_is_16_bit=True))
OPENPOSE = ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")


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
    if name in ("Klein", "KleinInpaint"):  # one repo, one base: both read all of it
        return [Want(source, KLEIN_FILES, KLEIN_WEIGHTS)]
    if name == "Image2Line":
        return [Want(source, (), (raw("mlsd_large_512_fp32.pth"),))]
    if name in ("Image2Hed", "Image2Scribble"):
        return [Want(source, (), (raw("ControlNetHED.pth"),))]
    if name == "Image2Pose":
        return [Want(source, (), tuple(raw(f) for f in OPENPOSE))]
    if name == "LLM":  # today's LLMs ship bfloat16 weights, not float32
        return [Want(source, TRANSFORMERS_FILES, (transformers(full_is_16_bit=True),))]
    if name == "Florence2":  # transformers' port saved it in float16 (its conversion script loads it so)
        return [Want(source, TRANSFORMERS_FILES, (transformers(full_is_16_bit=True),))]
    # The transformers models (SafetyChecker, Text2Box, Segmenting, Sam2 and DepthAnything among them), and
    # any model added later that is laid out like one. Sam2's repo also holds the original checkpoint
    # (sam2.1_hiera_base_plus.pt) and its .yaml: neither is in these lists, so neither is fetched.
    return [Want(source, TRANSFORMERS_FILES, (transformers(),))]


# --- in a local folder --------------------------------------------------------------------


def is_index(name: str) -> bool:
    """Whether a weight file is the index of a sharded checkpoint (model.safetensors.index[.fp16].json)."""
    return ".index." in os.path.basename(name) and name.endswith(".json")


def shards(index_path: str, index_name: str) -> list[str]:
    """The shard files the index ``index_name`` (read from ``index_path``) names, as paths in its repo."""
    folder = os.path.dirname(index_name)
    with open(index_path) as f:
        return [os.path.join(folder, s) if folder else s for s in dict.fromkeys(json.load(f)["weight_map"].values())]


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
