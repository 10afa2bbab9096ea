"""Text2Mask: a mask of an object named in words (CLIPSeg), as the seed's MaskFormer made it."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

from .base import LoadSpec, Output, Param, PoolModel, Progress, SharedBases

# The seed grew every selected pixel by 20 px in each direction on the 352x352
# CLIPSeg map, so inpainting also repaints the object's edge; we keep that
# fraction of the map's side whatever its resolution.
SEED_PADDING = 20 / 352


class Text2Mask(PoolModel):
    params = {
        "prompt": Param(str, required=True, help="the object to find, e.g. 'the dog'"),
        "threshold": Param(float, 0.5, min=0.0, max=1.0, help="how sure the model must be that a pixel is the object"),
    }
    n_images = 1
    image_names = ("image",)

    def __init__(self, spec: LoadSpec):
        super().__init__(spec)
        self.processor = CLIPSegProcessor.from_pretrained(spec.source)
        model = CLIPSegForImageSegmentation.from_pretrained(spec.source, dtype=spec.dtype)
        self.model = model.to(spec.load_device).eval()

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        image = images[0].convert("RGB")
        inputs = self.processor(text=[params["prompt"]], images=[image], padding="max_length", return_tensors="pt")
        inputs = inputs.to(self.device)  # a BatchEncoding: no dtype cast, so cast the image by hand
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            logits = self.model(**inputs).logits
        selected = (torch.sigmoid(logits.float()).squeeze().cpu().numpy() > params["threshold"]).astype(np.uint8)
        radius = round(SEED_PADDING * max(selected.shape))
        grown = cv2.dilate(selected, np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)) * 255
        mask = Image.fromarray(grown).resize(image.size, Image.NEAREST)
        share = np.count_nonzero(np.asarray(mask)) / (image.width * image.height)
        progress(1, 1)
        return Output(images=[mask], text=f"mask covers {share:.0%} of the image")


def load_text2mask(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    return Text2Mask(spec)
