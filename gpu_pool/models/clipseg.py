"""Text2Mask: a mask of an object named in words (CLIPSeg), as the seed's MaskFormer made it.

The seed refused a mask covering under 2 % of the image (a speck is not the
object) and grew the rest by 20 px on CLIPSeg's 352x352 map, so inpainting
also repaints the object's edge. ``soft`` keeps the selected pixels as they
are, upsampled smoothly (the edge fades over about one map pixel), for
cut-outs and for callers that grow the mask themselves.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor


from .base import LoadSpec, Output, Param, PoolModel, Progress, SharedBases
from .loading import TransformersModel

# The seed's padding as a fraction of the map's side, whatever its resolution.
SEED_PADDING = 20 / 352
SEED_MIN_AREA = 0.02


class Text2Mask(TransformersModel):
    processor_class, model_class = CLIPSegProcessor, CLIPSegForImageSegmentation
    params = {
        "prompt": Param(str, required=True, help="the object to find, e.g. 'the dog'"),
        "threshold": Param(float, 0.5, min=0.0, max=1.0, help="how sure the model must be that a pixel is the object"),
        "min_area": Param(float, SEED_MIN_AREA, min=0.0, max=1.0,
                          help="a mask covering less of the image than this is no mask (all black)"),
        "soft": Param(bool, False, help="the selected pixels not grown, with smooth edges, instead of grown and 0/255"),
    }
    n_images = 1
    image_names = ("image",)

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        image = images[0].convert("RGB")
        inputs = self.processor(text=[params["prompt"]], images=[image], padding="max_length", return_tensors="pt")
        inputs = inputs.to(self.device)  # a BatchEncoding: no dtype cast, so cast the image by hand
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            logits = self.model(**inputs).logits
        probs = torch.sigmoid(logits.float()).reshape(logits.shape[-2:]).cpu().numpy()
        selected = (probs > params["threshold"]).astype(np.uint8)
        progress(1, 1)
        if not selected.any() or selected.mean() < params["min_area"]:  # nothing, or a speck: not the object
            why = f"{selected.mean():.1%} of the image, under the {params['min_area']:.0%} minimum" if selected.any() \
                else "nothing selected"
            return Output(images=[Image.new("L", image.size, 0)], text=f"no mask: {why}")
        if params["soft"]:
            mask = Image.fromarray(selected * 255).resize(image.size, Image.BILINEAR)
        else:
            radius = round(SEED_PADDING * max(selected.shape))
            grown = cv2.dilate(selected, np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)) * 255
            mask = Image.fromarray(grown).resize(image.size, Image.NEAREST)
        share = np.count_nonzero(np.asarray(mask) >= 128) / (image.width * image.height)
        return Output(images=[mask], text=f"mask covers {share:.0%} of the image")


def load_text2mask(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    return Text2Mask(spec)
