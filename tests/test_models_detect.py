"""Text2Box (GroundingDINO), Segmenting (SAM) and Text2Mask's masks, loaded from the tiny folders.

The tiny detector sees everything but unicorns and the tiny SAM outlines the
whole image, sure of it (see scripts/tiny_models/detect.py), so both the
"found" and the "nothing found" answers come through the real thresholds.
Every model runs in float32, float16 and bfloat16 on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.templates.masks import CLIPSEG, SAM, ObjectMask, grow
from gpu_pool.models.base import BadRequest, check_params
from tests.conftest import boxed_picture, loaded_by_dtype, run_to_the_end

SOURCES = {"Text2Box": "grounding-dino", "Segmenting": "sam", "Text2Mask": "clipseg"}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def load(tiny_dir: Path):
    return loaded_by_dtype(tiny_dir, SOURCES)


@pytest.fixture
def image() -> Image.Image:
    return boxed_picture()


run = run_to_the_end


# --- Text2Box ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_text2box_boxes_the_named_object_inside_the_image(load, image, dtype):
    out = run(load("Text2Box", dtype), {"prompt": "The yellow box"}, image)
    boxes, scores, labels = out.data["boxes"], out.data["scores"], out.data["labels"]
    assert out.images == [] and 1 <= len(boxes) == len(scores) == len(labels)
    for (x0, y0, x1, y1), score, label in zip(boxes, scores, labels):
        assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 64
        assert score > 0.3 and label == "yellow box"  # the words above the text threshold, not "the"
    assert scores == sorted(scores, reverse=True)
    assert out.text.startswith("yellow box 1.00 at [")


@pytest.mark.parametrize("dtype", DTYPES)
def test_text2box_finds_nothing_above_the_thresholds(load, image, dtype):
    model = load("Text2Box", dtype)
    out = run(model, {"prompt": "a unicorn"}, image)
    assert out.data == {"boxes": [], "scores": [], "labels": []} and out.text == "nothing found"
    strict = run(model, {"prompt": "the yellow box", "box_threshold": 1.0}, image)  # no score exceeds 1
    assert strict.data["boxes"] == []


def test_text2box_keeps_the_surest_boxes(load, image):
    assert len(run(load("Text2Box"), {"prompt": "a dog", "max_boxes": 1}, image).data["boxes"]) == 1
    with pytest.raises(BadRequest, match="'box_threshold' must be between 0 and 1, got 2.0"):
        check_params(load("Text2Box"), {"prompt": "a dog", "box_threshold": 2}, {})


# --- Segmenting --------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_segmenting_masks_each_box_and_the_points(load, image, dtype):
    model = load("Segmenting", dtype)
    out = run(model, {"boxes": [[20, 10, 60, 50], [0, 0, 30, 30.5]]}, image)
    assert len(out.images) == 2 and out.data["scores"] == [1.0, 1.0]
    for mask in out.images:
        assert mask.mode == "L" and mask.size == image.size
        assert np.asarray(mask).min() >= 128  # the tiny SAM: all of the image, sure of it
    [one] = run(model, {"points": [[30, 30], [40, 20]]}, image).images
    assert one.mode == "L" and one.size == image.size


@pytest.mark.parametrize("dtype", DTYPES)
def test_segmenting_everything_is_a_label_map(load, image, dtype):
    model = load("Segmenting", dtype)
    out = run(model, {"points_per_side": 8}, image)
    [labels] = out.images
    assert labels.mode == "L" and labels.size == image.size
    assert out.data == {"regions": 1, "areas": [1.0]} and np.unique(np.asarray(labels)).tolist() == [1]
    none = run(model, {"points_per_side": 8, "pred_iou_thresh": 1.0}, image)  # no predicted IoU exceeds 1
    assert none.data == {"regions": 0, "areas": []} and not np.asarray(none.images[0]).any()


@pytest.mark.parametrize("params, message", [
    ({"boxes": [[1, 2, 3]]}, "'boxes' must be a list of 1 to 64 [x0, y0, x1, y1] lists of numbers (pixels)."),
    ({"boxes": [["a", 2, 3, 4]]}, "'boxes' must be a list of 1 to 64 [x0, y0, x1, y1] lists of numbers (pixels)."),
    ({"points": [[1, 2]] * 65}, "'points' must be a list of 1 to 64 [x, y] lists of numbers (pixels)."),
    ({"boxes": [[1, 2, 3, 4]], "points": [[1, 2]]}, "Segmenting takes boxes or points, not both."),
])
def test_segmenting_says_how_to_fix_bad_prompts(load, image, params, message):
    model = load("Segmenting")
    with pytest.raises(BadRequest) as e:
        model.run(check_params(model, params, {}), [image], lambda i, n: None)
    assert str(e.value) == message


# --- Text2Mask: soft masks and the seed's minimum area -------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_text2mask_soft_is_not_grown_and_has_smooth_edges(load, image, dtype):
    model = load("Text2Mask", dtype)
    grown = np.asarray(run(model, {"prompt": "the box"}, image).images[0])
    soft = np.asarray(run(model, {"prompt": "the box", "soft": True}, image).images[0])
    assert set(np.unique(grown).tolist()) <= {0, 255}
    assert len(np.unique(soft)) > 2  # edges fade instead of stepping
    assert np.count_nonzero(soft >= 128) < np.count_nonzero(grown)  # the grown one reaches further
    assert not (soft >= 128)[grown == 0].any()  # and covers all of the soft one


def test_text2mask_refuses_a_speck(load, image):
    model = load("Text2Mask")
    assert check_params(model, {"prompt": "x"}, {})["min_area"] == 0.02  # the seed's minimum
    found = run(model, {"prompt": "the box", "min_area": 0.0, "soft": True}, image)
    share = np.count_nonzero(np.asarray(found.images[0]) >= 128) / (96 * 64)
    assert 0 < share < 0.99
    speck = run(model, {"prompt": "the box", "min_area": 0.99}, image)  # what was found is a speck of this
    assert not np.asarray(speck.images[0]).any() and speck.images[0].size == image.size
    assert speck.text.startswith("no mask: ") and speck.text.endswith("% of the image, under the 99% minimum")


# --- what the flows make of a mask ---------------------------------------------


def test_grow_is_the_seeds_square_padding():
    mask = np.zeros((20, 30), bool)
    mask[10, 15] = mask[0, 0] = True
    grown = grow(mask, 3)
    expected = np.zeros_like(mask)
    expected[7:14, 12:19] = expected[0:4, 0:4] = True  # clipped at the border
    assert (grown == expected).all()
    assert (grow(mask, 0) == mask).all()


def test_inpainting_grows_the_mask_and_a_cutout_does_not():
    soft = np.zeros((64, 128), np.uint8)
    soft[20:40, 50:80] = 255
    soft[19, 50:80] = soft[40, 50:80] = 100  # smooth edges, under half sure: outside
    for by, radius in ((SAM, 5), (CLIPSEG, 7)):  # 20/512 and 20/352 of the long side, 128 px
        mask = ObjectMask(Image.fromarray(soft, "L"), by, job=None)  # the job: for provenance only
        assert mask.for_cutout() is mask.soft
        inpaint = np.asarray(mask.for_inpainting())
        assert set(np.unique(inpaint).tolist()) == {0, 255}
        ys, xs = np.nonzero(inpaint)
        assert (ys.min(), ys.max(), xs.min(), xs.max()) == (20 - radius, 39 + radius, 50 - radius, 79 + radius)
