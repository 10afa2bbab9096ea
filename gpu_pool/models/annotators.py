"""The condition-image makers (Image2Canny ... Image2Normal), as the seed ran them.

Each one is an ``Annotator``: a ``detect(image, params)`` function plus the torch
modules it holds. Whatever size a detector works at (controlnet_aux resizes to
512 px), the map comes back RGB and the size of the input image.

The controlnet_aux networks (MLSD, HED, OpenPose) stay fp32 whatever the spec's
dtype: their ``__call__`` feeds them ``.float()`` tensors. They do move to the
spec's device. UperNet and DPT run in the spec's dtype.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from .base import LoadSpec, Output, Param, PoolModel, Progress, SharedBases

Detect = Callable[[Image.Image, dict[str, Any]], "np.ndarray | Image.Image"]


class Annotator(PoolModel):
    """One condition-image maker: ``detect`` returns a map of any size, ``run`` makes it RGB at the input's size."""

    n_images = 1
    image_names = ("image",)

    def __init__(self, spec: LoadSpec, detect: Detect, nets: dict[str, torch.nn.Module] | None = None,
                 params: dict[str, Param] | None = None, resample: int = Image.BILINEAR):
        super().__init__(spec)
        self.params = params or {}
        self._detect = detect
        self._nets = nets or {}
        self._resample = resample  # NEAREST where colours are labels (segmentation)

    def modules(self) -> dict[str, torch.nn.Module]:
        return dict(self._nets)

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        image = images[0].convert("RGB")
        with torch.inference_mode():
            out = self._detect(image, params)
        if isinstance(out, np.ndarray):
            out = Image.fromarray(out)
        progress(1, 1)
        return Output(images=[out.convert("RGB").resize(image.size, self._resample)])


# --- controlnet_aux detectors ------------------------------------------------

# controlnet_aux scales the image's shorter side to this (rounding both sides to
# multiples of 64) before detecting; 512 is its default and what the seed used.
RESOLUTION = {"detect_resolution": Param(int, 512, min=64, max=2048, help="pixels the detector works at (shorter side)")}


def _res(params: dict[str, Any]) -> dict[str, int]:
    """controlnet_aux's two size arguments: detect at the resolution, and return the map at it too."""
    return {"detect_resolution": params["detect_resolution"], "image_resolution": params["detect_resolution"]}


def load_canny(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    from controlnet_aux import CannyDetector

    detector = CannyDetector()  # OpenCV; no weights
    params = {
        "low_threshold": Param(int, 100, min=1, max=255, help="edges weaker than this are dropped"),
        "high_threshold": Param(int, 200, min=1, max=255, help="edges stronger than this are always kept"),
        **RESOLUTION,
    }
    return Annotator(spec, lambda im, p: detector(im, low_threshold=p["low_threshold"], high_threshold=p["high_threshold"],
                                                     output_type="np", **_res(p)),
                     params=params)


def load_line(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    from controlnet_aux import MLSDdetector

    detector = MLSDdetector.from_pretrained(spec.source).to(spec.load_device)
    return Annotator(spec, lambda im, p: detector(im, thr_v=0.1, thr_d=0.1, output_type="np", **_res(p)),
                     {"mlsd": detector.model}, RESOLUTION)


def load_hed(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    return _hed(spec, scribble=False)


def load_scribble(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    return _hed(spec, scribble=True)


def _hed(spec: LoadSpec, scribble: bool) -> PoolModel:
    from controlnet_aux import HEDdetector

    detector = HEDdetector.from_pretrained(spec.source).to(spec.load_device)
    return Annotator(spec, lambda im, p: detector(im, scribble=scribble, output_type="np", **_res(p)),
                     {"hed": detector.netNetwork}, RESOLUTION)


def load_pose(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    from controlnet_aux import OpenposeDetector

    # from_pretrained loads the hand and face nets too; the seed (and the
    # openpose ControlNet) used the body skeleton only, so they are off by default.
    detector = OpenposeDetector.from_pretrained(spec.source).to(spec.load_device)
    params = {
        "hands": Param(bool, False, help="also draw hand keypoints"),
        "face": Param(bool, False, help="also draw face keypoints"),
        **RESOLUTION,
    }
    nets = {"body": detector.body_estimation.model, "hand": detector.hand_estimation.model,
            "face": detector.face_estimation.model}
    return Annotator(spec, lambda im, p: detector(im, include_hand=p["hands"], include_face=p["face"],
                                                     output_type="np", **_res(p)),
                     nets, params)


# --- transformers models -----------------------------------------------------


def load_seg(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    from controlnet_aux.util import ade_palette
    from transformers import AutoImageProcessor, UperNetForSemanticSegmentation

    processor = AutoImageProcessor.from_pretrained(spec.source)
    model = UperNetForSemanticSegmentation.from_pretrained(spec.source, dtype=spec.dtype).to(spec.load_device).eval()
    palette = np.array(ade_palette(), dtype=np.uint8)

    def detect(image: Image.Image, params: dict[str, Any]) -> np.ndarray:
        pixels = processor(image, return_tensors="pt").pixel_values.to(spec.device, spec.dtype)
        outputs = model(pixel_values=pixels)
        labels = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
        return palette[labels.cpu().numpy() % len(palette)]  # the seed's ADE20K colours, one per class

    return Annotator(spec, detect, {"model": model}, resample=Image.NEAREST)


def _depth_pipeline(spec: LoadSpec):
    from transformers import pipeline

    estimator = pipeline("depth-estimation", model=spec.source, device=spec.load_device, dtype=spec.dtype)
    estimator.device = torch.device(spec.device)  # where it sends inputs: the weights are there during a job
    return estimator


def load_depth(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    estimator = _depth_pipeline(spec)
    return Annotator(spec, lambda im, p: estimator(im)["depth"], {"model": estimator.model})


def load_normal(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    estimator = _depth_pipeline(spec)
    return Annotator(spec, lambda im, p: depth_to_normal(estimator(im)["predicted_depth"]), {"model": estimator.model})


def depth_to_normal(depth: torch.Tensor, background: float = 0.4) -> np.ndarray:
    """The seed's normal map: Sobel gradients of the depth, flat where the scene is far away.

    The pipeline gives depth at the input's size (the seed took it at the
    model's 384 px), so the slopes are per input pixel.
    """
    import cv2

    d = depth.squeeze().float().cpu().numpy()
    span = float(d.max() - d.min())
    near = (d - d.min()) / span if span > 0 else np.zeros_like(d)  # a flat map is all background
    x = cv2.Sobel(d, cv2.CV_32F, 1, 0, ksize=3)
    y = cv2.Sobel(d, cv2.CV_32F, 0, 1, ksize=3)
    x[near < background] = 0
    y[near < background] = 0
    z = np.full_like(x, 2.0 * np.pi)
    normal = np.stack([x, y, z], axis=2)
    normal /= np.sqrt(np.sum(normal**2, axis=2, keepdims=True))
    return (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)
