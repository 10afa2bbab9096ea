"""Segmenting: Segment Anything (SAM), as the seed used it.

Two ways in, one model:

- boxes (e.g. GroundingDINO's) or points on one object: one mask per box, or
  one for the points, each an "L" image at the input's size whose value is
  SAM's certainty (0-255; 128 is SAM's own cut-off). Soft edges come from
  SAM's low-resolution logits upsampled bilinearly: a cut-out can use the
  mask as its alpha without a halo, and an inpainting mask is made from it
  by thresholding and growing (in the core).
- neither: "segment everything", SAM's automatic mask generator (a grid of
  points, the masks SAM is sure of, duplicates removed; transformers'
  ``mask-generation`` pipeline, written out), as one "L" label
  image: 0 where no mask is, else the region's number, the largest first
  (smaller regions are painted over larger ones).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import SamModel, SamProcessor


from .base import BadRequest, LoadSpec, Output, Param, PoolModel, Progress, SharedBases
from .loading import TransformersModel

MAX_PROMPTS = 64  # boxes per job: GroundingDINO's surest few are what a flow sends
# SamAutomaticMaskGenerator's batch of points at 512x512; fewer on larger images, since each point's three
# masks are upsampled to the image's size on the device (at 1024 px, 64 points would take 2.4 GiB).
POINTS_PER_BATCH = 64


class Segmenting(TransformersModel):
    processor_class, model_class = SamProcessor, SamModel
    params = {
        "boxes": Param(list, None, help="[[x0, y0, x1, y1], ...] in pixels: one mask per box"),
        "points": Param(list, None, help="[[x, y], ...] in pixels, all on one object: one mask"),
        # segment everything (neither boxes nor points): SamAutomaticMaskGenerator's defaults, as the seed
        "points_per_side": Param(int, 32, min=1, max=64, help="the grid of points tried over the image"),
        "pred_iou_thresh": Param(float, 0.88, min=0.0, max=1.0, help="how good SAM must think a mask is"),
        "stability_score_thresh": Param(float, 0.95, min=0.0, max=1.0, help="how stable a mask must be"),
    }
    n_images = 1
    image_names = ("image",)

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        image = images[0].convert("RGB")
        boxes, points = params["boxes"], params["points"]
        if boxes and points:
            raise BadRequest("Segmenting takes boxes or points, not both.")
        if boxes:
            out = self._prompted(image, input_boxes=[coords(boxes, 4, "boxes", "[x0, y0, x1, y1]")])
        elif points:
            pts = coords(points, 2, "points", "[x, y]")
            out = self._prompted(image, input_points=[[pts]], input_labels=[[[1] * len(pts)]])
        else:
            return self._everything(image, params, progress)
        progress(1, 1)
        return out

    def _prompted(self, image: Image.Image, **prompts: Any) -> Output:
        inputs = self.processor(images=image, return_tensors="pt", **prompts).to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        one_object = "input_points" in prompts  # points: SAM's three guesses, the best kept (SAM's advice)
        with torch.inference_mode():
            outputs = self.model(**inputs, multimask_output=one_object)
        logits = self.processor.image_processor.post_process_masks(
            outputs.pred_masks.float().cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu(),
            binarize=False)[0]  # (prompts, guesses, H, W)
        scores = outputs.iou_scores[0].float().cpu()  # (prompts, guesses)
        best = scores.argmax(dim=1)
        masks = [logits[i, best[i]] for i in range(logits.shape[0])]
        soft = [Image.fromarray((torch.sigmoid(m) * 255).round().byte().numpy(), "L") for m in masks]
        ious = [round(float(scores[i, best[i]]), 3) for i in range(len(masks))]
        return Output(images=soft, text=f"{len(soft)} mask(s)", data={"scores": ious})

    def _everything(self, image: Image.Image, params: dict[str, Any], progress: Progress) -> Output:
        """transformers' mask-generation pipeline, step by step: it reports progress per batch of
        points, and keeps scores in float32 (the pipeline's NMS fails on float16 ones)."""
        ip = self.processor.image_processor
        crop_boxes, grid, crops, point_labels = ip.generate_crop_boxes(
            image, ip.size["longest_edge"], points_per_crop=params["points_per_side"])
        inputs = ip(images=crops, return_tensors="pt")
        sizes = dict(original_sizes=inputs["original_sizes"], reshaped_input_sizes=inputs["reshaped_input_sizes"])
        with torch.inference_mode():
            embeddings = self.model.get_image_embeddings(inputs["pixel_values"].to(self.device, self.dtype))
        masks, scores, boxes = [], [], []
        per_batch = max(4, min(POINTS_PER_BATCH, POINTS_PER_BATCH * 512 * 512 // (image.width * image.height)))
        batches = range(0, grid.shape[1], per_batch)
        for step, i in enumerate(batches, 1):
            with torch.inference_mode():
                out = self.model(image_embeddings=embeddings, multimask_output=True,
                                 input_points=grid[:, i:i + per_batch].to(self.device, self.dtype),
                                 input_labels=point_labels[:, i:i + per_batch].to(self.device))
            # upsampled and filtered on the device (64 points x 3 masks at the image's size); run-length coded
            logits = ip.post_process_masks(out.pred_masks.float(), binarize=False, **sizes)[0]
            kept, kept_scores, kept_boxes = ip.filter_masks(
                logits, out.iou_scores[0].float(), (image.height, image.width), crop_boxes[0],
                params["pred_iou_thresh"], params["stability_score_thresh"])
            masks += kept
            scores.append(kept_scores.cpu())
            boxes.append(kept_boxes.cpu())
            progress(step, len(batches))
        found, *_ = ip.post_process_for_mask_generation(masks, torch.cat(scores), torch.cat(boxes), 0.7)
        found = sorted((m.numpy().astype(bool) for m in found), key=np.count_nonzero, reverse=True)[:255]
        labels = np.zeros((image.height, image.width), np.uint8)
        for i, m in enumerate(found, 1):
            labels[m] = i
        areas = [round(n / labels.size, 4) for n in np.bincount(labels.ravel(), minlength=len(found) + 1)[1:].tolist()]
        return Output(images=[Image.fromarray(labels, "L")], text=f"{len(found)} region(s)",
                      data={"regions": len(found), "areas": areas})


def coords(value: list, n: int, name: str, shape: str) -> list[list[float]]:
    """``value`` as a list of n-number lists; BadRequest saying the expected shape otherwise."""
    ok = 0 < len(value) <= MAX_PROMPTS and all(
        isinstance(v, list) and len(v) == n and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        for v in value)
    if not ok:
        raise BadRequest(f"'{name}' must be a list of 1 to {MAX_PROMPTS} {shape} lists of numbers (pixels).")
    return [[float(x) for x in v] for v in value]


def load_segmenting(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    return Segmenting(spec)
