"""The condition-image makers (Image2Canny ... Image2Normal), as the seed ran them.

Each one is an ``Annotator``: a ``detect(image, params)`` function plus the torch
modules it holds. Whatever size a detector works at (controlnet_aux resizes to
512 px), the map comes back RGB and the size of the input image. Edge, line
and scribble maps stay black and white, like the maps ControlNet was trained
on: they are scaled with nearest-neighbour and re-thresholded, never blurred
to grey; Canny runs at the image's own size, as the seed ran it.

The controlnet_aux networks (MLSD, HED, OpenPose) stay fp32 whatever the spec's
dtype: their ``__call__`` feeds them ``.float()`` tensors. They do move to the
spec's device. UperNet and DPT run in the spec's dtype.
"""

from __future__ import annotations

import os
from typing import Any
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from gpu_pool import weights as w

from .base import LoadSpec, Output, Param, PoolModel, Progress, SharedBases
from .loading import checked

Detect = Callable[[Image.Image, dict[str, Any]], "np.ndarray | Image.Image"]


class Annotator(PoolModel):
    """One condition-image maker: ``detect`` returns a map of any size, ``run`` makes it RGB at the input's size."""

    n_images = 1
    image_names = ("image",)

    def __init__(self, spec: LoadSpec, detect: Detect, nets: dict[str, torch.nn.Module] | None = None,
                 params: dict[str, Param] | None = None, resample: int = Image.BILINEAR, binary: bool = False):
        super().__init__(spec)
        self.params = params or {}
        self._detect = detect
        self._nets = nets or {}
        self._resample = resample  # NEAREST where colours are labels (segmentation)
        self._binary = binary  # black-and-white maps (edges, lines, scribbles)

    def modules(self) -> dict[str, torch.nn.Module]:
        return dict(self._nets)

    def run(self, params: dict[str, Any], images: list[Image.Image], progress: Progress) -> Output:
        image = images[0].convert("RGB")
        with torch.inference_mode():
            out = self._detect(image, params)
        if isinstance(out, np.ndarray):
            out = Image.fromarray(out)
        out = out.convert("RGB")
        if out.size != image.size:
            out = out.resize(image.size, Image.NEAREST if self._binary else self._resample)
        if self._binary:
            out = out.point(lambda v: 255 if v > 127 else 0)
        progress(1, 1)
        return Output(images=[out])


# --- controlnet_aux detectors ------------------------------------------------

# controlnet_aux scales the image's shorter side to this (rounding both sides to
# multiples of 64) before detecting; 512 is its default and what the seed used.
RESOLUTION = {"detect_resolution": Param(int, 512, min=64, max=2048,
                                         help="pixels the detector works at (shorter side)")}


def _res(params: dict[str, Any]) -> dict[str, int]:
    """controlnet_aux's two size arguments: detect at the resolution, and return the map at it too."""
    return {"detect_resolution": params["detect_resolution"], "image_resolution": params["detect_resolution"]}


def load_canny(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    import cv2

    params = {
        "low_threshold": Param(int, 100, min=1, max=255, help="edges weaker than this are dropped"),
        "high_threshold": Param(int, 200, min=1, max=255, help="edges stronger than this are always kept"),
    }

    def detect(image: Image.Image, p: dict[str, Any]) -> np.ndarray:
        # OpenCV on the image at its own size, as the seed did: no weights, and no resize to make grey.
        return cv2.Canny(np.asarray(image), p["low_threshold"], p["high_threshold"])

    return Annotator(spec, detect, params=params, binary=True)


def load_line(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    from controlnet_aux import MLSDdetector

    detector = MLSDdetector.from_pretrained(spec.source).to(spec.load_device)
    return Annotator(spec, lambda im, p: detector(im, thr_v=0.1, thr_d=0.1, output_type="np", **_res(p)),
                     {"mlsd": detector.model}, RESOLUTION, binary=True)


def load_hed(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    return _hed(spec, scribble=False)


def load_scribble(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    return _hed(spec, scribble=True)


def _hed(spec: LoadSpec, scribble: bool) -> PoolModel:
    from controlnet_aux import HEDdetector

    detector = HEDdetector.from_pretrained(spec.source).to(spec.load_device)
    return Annotator(spec, lambda im, p: detector(im, scribble=scribble, output_type="np", **_res(p)),
                     {"hed": detector.netNetwork}, RESOLUTION, binary=scribble)  # soft edges are grey on purpose


def load_pose(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    return Pose(spec)


class Pose(Annotator):
    """OpenPose: the body network at load; the hand and face networks (300 MB the seed and the
    openpose ControlNet never used) only once a job asks for hands or a face."""

    def __init__(self, spec: LoadSpec):
        from controlnet_aux import OpenposeDetector
        from controlnet_aux.open_pose.body import Body

        params = {
            "hands": Param(bool, False, help="also draw hand keypoints"),
            "face": Param(bool, False, help="also draw face keypoints"),
            **RESOLUTION,
        }
        body = Body(os.path.join(spec.source, w.OPENPOSE[0])).to(spec.load_device)
        self.detector = OpenposeDetector(body)
        super().__init__(spec, self._pose, {"body": body.model}, params)

    def _pose(self, image: Image.Image, p: dict[str, Any]) -> np.ndarray:
        if p["hands"] and self.detector.hand_estimation is None:
            from controlnet_aux.open_pose.hand import Hand

            self.detector.hand_estimation = self._lazy(Hand(os.path.join(self.spec.source, w.OPENPOSE[1])), "hand")
        if p["face"] and self.detector.face_estimation is None:
            from controlnet_aux.open_pose.face import Face

            self.detector.face_estimation = self._lazy(Face(os.path.join(self.spec.source, w.OPENPOSE[2])), "face")
        return self.detector(image, include_hand=p["hands"], include_face=p["face"], output_type="np", **_res(p))

    def _lazy(self, net: Any, name: str) -> Any:
        """A network loaded during a job: onto the device the job runs on; listed for the byte accounting."""
        net.model.to(self.device)
        self._nets[name] = net.model
        return net


# --- transformers models -----------------------------------------------------


def load_seg(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    from controlnet_aux.util import ade_palette
    from transformers import AutoImageProcessor, UperNetForSemanticSegmentation

    processor = AutoImageProcessor.from_pretrained(spec.source)
    model = checked(UperNetForSemanticSegmentation, spec.source, spec.dtype, w.transformers())
    model = model.to(spec.load_device).eval()
    palette = np.array(ade_palette(), dtype=np.uint8)

    def detect(image: Image.Image, params: dict[str, Any]) -> np.ndarray:
        pixels = processor(image, return_tensors="pt").pixel_values.to(spec.device, spec.dtype)
        outputs = model(pixel_values=pixels)
        outputs.logits = outputs.logits.float()  # resized and argmaxed in float32: bfloat16 has few levels
        labels = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
        return palette[labels.cpu().numpy() % len(palette)]  # the seed's ADE20K colours, one per class

    return Annotator(spec, detect, {"model": model}, resample=Image.NEAREST)


# DPT's first fusion layer has a residual branch its forward never uses (there is nothing to fuse
# yet); Intel/dpt-hybrid-midas ships without its weights, which is not a mismatch.
DPT_UNUSED = (r"neck\.fusion_stage\.layers\.0\.residual_layer1\.",)
Predict = Callable[[Image.Image], torch.Tensor]


def depth_predictor(spec: LoadSpec, network: type | None = None,
                    allow_missing: tuple[str, ...] = DPT_UNUSED) -> tuple[Predict, torch.nn.Module]:
    """A depth network (DPT unless ``network`` says otherwise): a function from an image to its depth
    (float32, the image's size; larger is nearer), and the network."""
    from transformers import AutoImageProcessor, DPTForDepthEstimation

    processor = AutoImageProcessor.from_pretrained(spec.source)
    model = checked(network or DPTForDepthEstimation, spec.source, spec.dtype, w.transformers(),
                    allow_missing=allow_missing)
    model = model.to(spec.load_device).eval()

    def predict(image: Image.Image) -> torch.Tensor:
        pixels = processor(images=image, return_tensors="pt").pixel_values.to(spec.device, spec.dtype)
        depth = model(pixel_values=pixels).predicted_depth.float()  # NumPy has no bfloat16
        # as transformers' depth-estimation pipeline: bicubic to the image's size
        return torch.nn.functional.interpolate(depth[:, None], size=image.size[::-1], mode="bicubic",
                                               align_corners=False)[0, 0]

    return predict, model


def depth_map(depth: torch.Tensor) -> np.ndarray:
    """The seed's depth map: the depth stretched to 0-255, near = bright (a flat scene: all black)."""
    d = depth.cpu().numpy()
    span = float(d.max() - d.min())
    return ((d - d.min()) / span * 255 if span > 0 else np.zeros_like(d)).astype(np.uint8)


def load_depth(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    predict, model = depth_predictor(spec)
    return Annotator(spec, lambda im, p: depth_map(predict(im)), {"model": model})


def load_normal(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    predict, model = depth_predictor(spec)
    return Annotator(spec, lambda im, p: depth_to_normal(predict(im)), {"model": model})


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
