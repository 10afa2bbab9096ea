"""SafetyChecker: Stable Diffusion's NSFW checker, run on every image a drawing model makes.

The model is diffusers' ``StableDiffusionSafetyChecker`` (the SD1.5 repo's
``safety_checker``, ``CompVis/stable-diffusion-safety-checker``) with its CLIP
image processor. It embeds an image with a CLIP ViT-L/14 vision tower and
compares it with 17 concept embeddings and 3 "special care" ones; each has its
own threshold, stored in the weights:

    score[c] = cos(image, concept[c]) - threshold[c] (+ 0.01 once any special-care score is above 0)
    flagged  = any score above 0, at three decimals

``scores`` is that computation, vectorised, returning the highest score per
image for the log as well as the flag (``forward`` itself returns only the
flag and blacks out the image). The scheduler calls ``check`` after a drawing
job; as a job of its own it answers in words.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker, cosine_distance
from PIL import Image
from transformers import CLIPImageProcessor

from gpu_pool.protocol import Verdict

from .base import LoadSpec, Output, Param, PoolModel, Progress, SharedBases
from .loading import TransformersModel

SPECIAL_CARE_ADJUSTMENT = 0.01  # what diffusers adds to every concept score once a special-care concept matched


def scores(model: StableDiffusionSafetyChecker, clip_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(flagged, highest concept score) per image, as ``StableDiffusionSafetyChecker.forward`` decides."""
    embeds = model.visual_projection(model.vision_model(clip_input)[1])
    special = cosine_distance(embeds, model.special_care_embeds).float() - model.special_care_embeds_weights.float()
    adjustment = (special.round(decimals=3) > 0).any(dim=1, keepdim=True) * SPECIAL_CARE_ADJUSTMENT
    concept = cosine_distance(embeds, model.concept_embeds).float() - model.concept_embeds_weights.float() + adjustment
    concept = concept.round(decimals=3)
    return (concept > 0).any(dim=1), concept.max(dim=1).values


class SafetyChecker(TransformersModel):
    processor_class, model_class = CLIPImageProcessor, StableDiffusionSafetyChecker
    params: dict[str, Param] = {}
    n_images = 1
    image_names = ("image",)

    def __init__(self, spec: LoadSpec):
        super().__init__(spec)
        # Device threads of other devices call check too: one image batch at a time.
        self._lock = threading.Lock()

    def check(self, images: list[Image.Image]) -> list[Verdict]:
        """One verdict per image; call on a worker thread, with the weights on the device."""
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt").pixel_values
        with self._lock, torch.inference_mode():
            flagged, best = scores(self.model, pixels.to(self.device, self.dtype))
        return [Verdict(bool(f), round(float(s), 3)) for f, s in zip(flagged, best)]

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        verdict = self.check(images)[0]
        progress(1, 1)
        return Output(text=f"{'flagged' if verdict.flagged else 'not flagged'} (score {verdict.score:+.3f})")


def load_safety_checker(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    return SafetyChecker(spec)
