"""BLIP: ImageCaptioning and VisualQuestionAnswering, as the seed ran them (TaskMatrix visual_chatgpt.py)."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from transformers import BlipForConditionalGeneration, BlipForQuestionAnswering, BlipProcessor


from .base import LoadSpec, Output, Param, PoolModel, Progress, SharedBases
from .loading import TransformersModel


class _Blip(TransformersModel):
    """A BLIP processor and model; ``run`` generates and decodes one text."""

    processor_class = BlipProcessor
    n_images = 1
    image_names = ("image",)

    def _generate(self, image: Image.Image, question: str | None, progress: Progress) -> Output:
        inputs = self.processor(images=image.convert("RGB"), text=question, return_tensors="pt")
        inputs = inputs.to(self.device, self.dtype)  # casts only the float tensors (pixel values)
        with torch.inference_mode():
            out = self.model.generate(**inputs)
        text = self.processor.decode(out[0], skip_special_tokens=True).strip()
        progress(1, 1)
        return Output(text=text)  # may be empty; the tool layer says so


class Captioning(_Blip):
    model_class = BlipForConditionalGeneration
    params: dict[str, Param] = {}

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        return self._generate(images[0], None, progress)


class QuestionAnswering(_Blip):
    model_class = BlipForQuestionAnswering
    params = {"question": Param(str, required=True, help="the question about the image, in English")}

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        return self._generate(images[0], params["question"], progress)


def load_captioning(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    return Captioning(spec)


def load_vqa(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    return QuestionAnswering(spec)
