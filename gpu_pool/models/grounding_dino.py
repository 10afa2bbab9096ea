"""Text2Box: boxes around objects named in words (GroundingDINO), as the seed's Text2Box found them.

The seed lower-cased the prompt, ended it with a full stop, kept the boxes
whose best word scored above 0.3 and labelled each with the words scoring
above 0.25. The boxes come back as data (pixels of the input image), not as
a picture: the core draws them, and hands them to Segmenting for masks.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from PIL import Image
from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor


from .base import LoadSpec, Output, Param, PoolModel, Progress, SharedBases
from .loading import TransformersModel


def seed_caption(prompt: str) -> str:
    """The prompt as GroundingDINO was trained to read it: lower case, ending with '.'."""
    caption = prompt.lower().strip()
    return caption if caption.endswith(".") else caption + "."


class Text2Box(TransformersModel):
    processor_class, model_class = GroundingDinoProcessor, GroundingDinoForObjectDetection
    params = {
        "prompt": Param(str, required=True, help="the objects to find, e.g. 'the dog'"),
        "box_threshold": Param(float, 0.3, min=0.0, max=1.0,
                               help="how sure the model must be that a box holds the object"),
        "text_threshold": Param(float, 0.25, min=0.0, max=1.0,
                                help="how sure it must be of a word to label a box with it"),
        "max_boxes": Param(int, 20, min=1, max=900, help="most boxes to return, the surest first"),
    }
    n_images = 1
    image_names = ("image",)

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        image = images[0].convert("RGB")
        inputs = self.processor(images=image, text=seed_caption(params["prompt"]), return_tensors="pt")
        inputs = inputs.to(self.device, self.dtype)  # casts only the float tensors (pixel values)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        outputs.logits, outputs.pred_boxes = outputs.logits.float(), outputs.pred_boxes.float()
        found = self.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=params["box_threshold"], text_threshold=params["text_threshold"],
            target_sizes=[(image.height, image.width)])[0]
        boxes, scores, labels = [], [], []
        for i in found["scores"].argsort(descending=True).tolist():
            box = _clip(found["boxes"][i].tolist(), image.size)
            if box is None or len(boxes) == params["max_boxes"]:
                continue
            boxes.append(box)
            scores.append(round(float(found["scores"][i]), 3))
            labels.append(_words(found["text_labels"][i]) or params["prompt"].strip())
        progress(1, 1)
        text = "; ".join(f"{label} {score:.2f} at {box}" for box, score, label in zip(boxes, scores, labels))
        return Output(text=text or "nothing found", data={"boxes": boxes, "scores": scores, "labels": labels})


def _words(label: str) -> str:
    """A box's words without the delimiters the model may also score ([SEP], full stops)."""
    return " ".join(re.sub(r"\[(CLS|SEP|PAD)\]|\.", " ", label).split())


def _clip(box: list[float], size: tuple[int, int]) -> list[float] | None:
    """The box inside the image, rounded to 0.1 px; None when nothing of it is left."""
    w, h = size
    x0, y0, x1, y1 = (round(min(max(v, 0.0), limit), 1) for v, limit in zip(box, (w, h, w, h)))
    return [x0, y0, x1, y1] if x1 > x0 and y1 > y0 else None


def load_text2box(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    return Text2Box(spec)
