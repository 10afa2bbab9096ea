"""DepthAnything: Depth Anything V2 Small (Apache-2.0; its Base and Large are non-commercial).

Presented as the seed's Image2Depth (DPT) presents depth: the relative depth
bicubic to the input's size, stretched to 0-255, near = bright, as an RGB grey
map (what the depth ControlNet reads). The repo's image processor resizes to
about 518 px, keeping the aspect ratio, at multiples of 14 pixels.
"""

from __future__ import annotations

from transformers import DepthAnythingForDepthEstimation

from .annotators import Annotator, depth_map, depth_predictor
from .base import LoadSpec, PoolModel, SharedBases


def load_depth_anything(spec: LoadSpec, bases: SharedBases) -> PoolModel:
    predict, model = depth_predictor(spec, DepthAnythingForDepthEstimation, allow_missing=())
    return Annotator(spec, lambda image, params: depth_map(predict(image)), {"model": model})
