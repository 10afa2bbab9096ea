"""The pool's model table: each model name (the seed's, then the modern profile's) -> the function that loads it.

Every loader has the signature ``load(spec: LoadSpec, bases: SharedBases) -> PoolModel``.
Imports are late (inside ``loader``) so listing the table costs nothing and a
broken optional dependency only breaks the models that need it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

from settings import SAFETY_CHECKER

from .base import LoadSpec, PoolModel, SharedBases

# transformers, given a hub repo with only a .bin checkpoint (openmmlab/upernet-convnext-small),
# starts a background thread that asks a Hub Space to convert it; the pool never wants that.
os.environ.setdefault("DISABLE_SAFETENSORS_CONVERSION", "1")

# name -> "module:function" under gpu_pool.models
MODEL_TABLE: dict[str, str] = {
    "ImageCaptioning": "blip:load_captioning",
    "VisualQuestionAnswering": "blip:load_vqa",
    "Text2Image": "sd:load_text2image",
    "InstructPix2Pix": "sd:load_pix2pix",
    "Inpainting": "sd:load_inpainting",
    "Text2Mask": "clipseg:load_text2mask",
    "Text2Box": "grounding_dino:load_text2box",
    "Segmenting": "sam:load_segmenting",
    "Image2Canny": "annotators:load_canny",
    "Image2Line": "annotators:load_line",
    "Image2Hed": "annotators:load_hed",
    "Image2Scribble": "annotators:load_scribble",
    "Image2Pose": "annotators:load_pose",
    "Image2Seg": "annotators:load_seg",
    "Image2Depth": "annotators:load_depth",
    "Image2Normal": "annotators:load_normal",
    "CannyText2Image": "sd:load_controlnet",
    "LineText2Image": "sd:load_controlnet",
    "HedText2Image": "sd:load_controlnet",
    "ScribbleText2Image": "sd:load_controlnet",
    "PoseText2Image": "sd:load_controlnet",
    "SegText2Image": "sd:load_controlnet",
    "DepthText2Image": "sd:load_controlnet",
    "NormalText2Image": "sd:load_controlnet",
    "Variations": "variations:load_variations",
    "Upscale": "upscale:load_upscale",
    SAFETY_CHECKER: "safety:load_safety_checker",
    "LLM": "llm:load_llm",
    # the modern profile's (settings.models.MODERN_DEFAULTS)
    "Klein": "flux2:load_klein",
    "KleinInpaint": "flux2:load_klein_inpaint",
    "Florence2": "florence:load_florence2",
    "Sam2": "sam2:load_sam2",
    "DepthAnything": "depth_anything:load_depth_anything",
}


def loader(name: str) -> Callable[[LoadSpec, SharedBases], PoolModel]:
    module, func = MODEL_TABLE[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), func)


def load_sd_base(source: str, device: str, dtype):
    """Load the shared Stable Diffusion 1.5 base (used by SharedBases)."""
    from .sd import load_base

    return load_base(source, device, dtype)
