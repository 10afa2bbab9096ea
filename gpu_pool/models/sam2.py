"""Sam2: SAM 2.1 (Apache-2.0), one mask from boxes or from points.

transformers' ``Sam2Model`` reads the repo's ``sam2_video`` checkpoint (the image
part of it). As the seed's Segmenting (SAM 1, ``sam.py``) the mask is soft: an
"L" image at the input's size whose value is SAM's certainty (0-255, white =
object, 128 its own cut-off), from its low-resolution logits upsampled
bilinearly, so a cut-out can use it as alpha and the core thresholds and grows
it for inpainting. Unlike Segmenting, several boxes give one mask, their union.

Points follow SAM 2's advice: one point is ambiguous (a shirt or the person?),
so SAM 2 gives three guesses and the one it is surest of is kept; several points
(``point_labels``: 1 on the object, 0 on the background) give one mask.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from transformers import Sam2Model, Sam2Processor

from .base import BadRequest, LoadSpec, Output, Param, PoolModel, Progress, SharedBases
from .loading import TransformersModel
from .sam import coords


class Sam2(TransformersModel):
    processor_class, model_class = Sam2Processor, Sam2Model
    params = {
        "boxes": Param(list, None, help="[[x0, y0, x1, y1], ...] in pixels: one mask, the union of the boxes' objects"),
        "points": Param(list, None, help="[[x, y], ...] in pixels, all on (or around) one object: one mask"),
        "point_labels": Param(list, None, help="one per point: 1 = on the object, 0 = background (default: all 1)"),
    }
    n_images = 1
    image_names = ("image",)

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        image = images[0].convert("RGB")
        boxes, points, labels = params["boxes"], params["points"], params["point_labels"]
        if bool(boxes) == bool(points):
            raise BadRequest("Sam2 takes either 'boxes' or 'points' (not both, not neither).")
        if labels is not None and not points:
            raise BadRequest("'point_labels' go with 'points' (one label per point).")
        if boxes:
            boxes = coords(boxes, 4, "boxes", "[x0, y0, x1, y1]")
            for box in boxes:
                _inside(box, image.size, "box")
                if box[2] <= box[0] or box[3] <= box[1]:
                    raise BadRequest(f"box {_show(box)} must have x1 > x0 and y1 > y0 ([x0, y0, x1, y1]: its "
                                     "top-left corner, then its bottom-right one).")
            masks, scores = self._masks(image, input_boxes=[boxes])
        else:
            points = coords(points, 2, "points", "[x, y]")
            for point in points:
                _inside(point, image.size, "point")
            labels = _labels(labels, len(points))
            masks, scores = self._masks(image, input_points=[[points]], input_labels=[[labels]])
        progress(1, 1)
        mask = torch.stack(masks).amax(dim=0)  # the union, soft: the surest of the masks at each pixel
        soft = Image.fromarray((torch.sigmoid(mask) * 255).round().byte().numpy(), "L")
        return Output(images=[soft], text=f"1 mask from {len(masks)} {'box(es)' if boxes else 'point set'}",
                      data={"scores": scores})

    def _masks(self, image: Image.Image, **prompts: Any) -> tuple[list[torch.Tensor], list[float]]:
        """One mask's logits (at the image's size) and SAM 2's predicted IoU per box, or for the points."""
        inputs = self.processor(images=image, return_tensors="pt", **prompts).to(self.device)
        for key in ("pixel_values", "input_boxes", "input_points"):  # the prompt encoder runs in the model's dtype
            if key in inputs:
                inputs[key] = inputs[key].to(self.dtype)
        one_point = len(prompts.get("input_points", [[[]]])[0][0]) == 1
        with torch.inference_mode():
            outputs = self.model(**inputs, multimask_output=one_point)
        logits = self.processor.post_process_masks(outputs.pred_masks.float().cpu(), inputs["original_sizes"].cpu(),
                                                   binarize=False)[0]  # (prompts, guesses, H, W)
        scores = outputs.iou_scores[0].float().cpu()  # (prompts, guesses)
        best = scores.argmax(dim=1)
        return ([logits[i, best[i]] for i in range(logits.shape[0])],
                [round(float(scores[i, best[i]]), 3) for i in range(logits.shape[0])])


def _inside(xy: list[float], size: tuple[int, int], what: str) -> None:
    w, h = size
    if any(not 0 <= v <= limit for v, limit in zip(xy, (w, h, w, h))):
        raise BadRequest(f"{what} {_show(xy)} is outside the {w}x{h} image (x from 0 to {w}, y from 0 to {h}).")


def _labels(labels: list | None, n: int) -> list[int]:
    if labels is None:
        return [1] * n
    if len(labels) != n or any(v not in (0, 1) or isinstance(v, bool) for v in labels):
        raise BadRequest(f"'point_labels' must hold one label per point ({n}): 1 = on the object, 0 = background.")
    return [int(v) for v in labels]


def _show(xy: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in xy) + "]"


def load_sam2(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    return Sam2(spec)

