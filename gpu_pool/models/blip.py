"""BLIP: ImageCaptioning and VisualQuestionAnswering, as the seed ran them (TaskMatrix visual_chatgpt.py)."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from transformers import BlipForConditionalGeneration, BlipForQuestionAnswering, BlipProcessor

from gpu_pool import weights as w

from .base import LoadSpec, Output, Param, PoolModel, Progress, SharedBases
from .loading import checked


class _Blip(PoolModel):
    """A BLIP processor and model; ``run`` generates and decodes one text."""

    n_images = 1
    image_names = ("image",)

    def __init__(self, spec: LoadSpec, model_cls: type):
        super().__init__(spec)
        self.processor = BlipProcessor.from_pretrained(spec.source)
        self.model = checked(model_cls, spec.source, spec.dtype, w.transformers()).to(spec.load_device).eval()

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def _generate(self, image: Image.Image, question: str | None, progress: Progress) -> Output:
        inputs = self.processor(images=image.convert("RGB"), text=question, return_tensors="pt")
        inputs = inputs.to(self.device, self.dtype)  # casts only the float tensors (pixel values)
        with torch.inference_mode():
            out = self.model.generate(**inputs)
        text = self.processor.decode(out[0], skip_special_tokens=True).strip()
        progress(1, 1)
        return Output(text=text)  # may be empty; the tool layer says so


class Captioning(_Blip):
    params: dict[str, Param] = {}

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        return self._generate(images[0], None, progress)


class QuestionAnswering(_Blip):
    params = {"question": Param(str, required=True, help="the question about the image, in English")}

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        return self._generate(images[0], params["question"], progress)


def load_captioning(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    return Captioning(spec, BlipForConditionalGeneration)


def load_vqa(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    return QuestionAnswering(spec, BlipForQuestionAnswering)
