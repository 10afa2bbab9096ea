"""Florence2: Florence-2 (MIT), one model for captions, OCR and phrase grounding.

transformers' native port (``Florence2ForConditionalGeneration``): each task is a
prompt token the processor turns into words ("<CAPTION>" -> "What does the image
describe?"), the model answers in text with location tokens (``<loc_0>`` ...
``<loc_999>``, thousandths of the image's width and height), and the processor's
post-processor reads those back with the task rules the repo's
``processor_config.json`` holds (which phrases never ground, e.g. "the image").
Generation as the model card runs it: 3 beams (the repo's generation config), up to
1,024 new tokens.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from PIL import Image
from transformers import Florence2ForConditionalGeneration, Florence2Processor

from .base import BadRequest, LoadSpec, Output, Param, PoolModel, Progress, SharedBases
from .loading import TransformersModel

# task -> Florence-2's prompt token
TASKS = {
    "caption": "<CAPTION>",
    "detailed_caption": "<DETAILED_CAPTION>",
    "more_detailed_caption": "<MORE_DETAILED_CAPTION>",
    "ocr": "<OCR>",
    "grounding": "<CAPTION_TO_PHRASE_GROUNDING>",
}
MAX_NEW_TOKENS = 1024  # the model card's
MAX_TEXT = 500  # characters of the phrase to ground: Florence-2 reads at most 1,024 tokens, image included


class Florence2(TransformersModel):
    processor_class, model_class = Florence2Processor, Florence2ForConditionalGeneration
    params = {
        "task": Param(str, "caption", choices=tuple(TASKS),
                      help="caption, detailed_caption, more_detailed_caption, ocr (the text in the image), or "
                           "grounding (boxes around what 'text' names)"),
        "text": Param(str, None, help="for grounding: the phrase to find, e.g. 'the red car'"),
    }
    n_images = 1
    image_names = ("image",)

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        task, text = params["task"], (params["text"] or "").strip()
        if task == "grounding" and not text:
            raise BadRequest("Florence2's grounding needs 'text': the phrase to find, e.g. 'the red car'.")
        if task != "grounding" and text:
            raise BadRequest(f"Florence2 takes 'text' only for task 'grounding' (the phrase to find), "
                             f"not for '{task}'.")
        if len(text) > MAX_TEXT:
            raise BadRequest(f"'text' must be at most {MAX_TEXT} characters, got {len(text)}.")
        if re.search(r"<[^<>]*>", text):  # a task token in it would change the task (or fail the processor)
            raise BadRequest("'text' must be plain words, without <...> tokens.")
        image = images[0].convert("RGB")
        inputs = self.processor(images=image, text=TASKS[task] + text, return_tensors="pt")
        inputs = inputs.to(self.device, self.dtype)  # casts only the float tensors (pixel values)
        with torch.inference_mode():
            ids = self.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS)
        progress(1, 1)
        if task != "grounding":  # plain text: the location and task tokens are special, so they go too
            return Output(text=self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip())
        return ground(self.processor, ids[0], image.size)


def ground(processor: Florence2Processor, ids: torch.Tensor, size: tuple[int, int]) -> Output:
    """The phrase grounding in generated ``ids`` as boxes in the pixels of an image of ``size`` (width, height)."""
    answer = processor.batch_decode(ids[None], skip_special_tokens=False)[0]
    found = processor.post_process_generation(answer, task=TASKS["grounding"], image_size=size)[TASKS["grounding"]]
    boxes, labels = [], []
    for (x0, y0, x1, y1), label in zip(found["bboxes"], found["labels"]):
        if x1 > x0 and y1 > y0:  # a box less than one bin wide says nothing
            boxes.append([int(x0), int(y0), int(x1), int(y1)])
            labels.append(label)
    text = "; ".join(f"{label} at {box}" for box, label in zip(boxes, labels))
    return Output(text=text or "nothing found", data={"boxes": boxes, "labels": labels})


def load_florence2(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    return Florence2(spec)
