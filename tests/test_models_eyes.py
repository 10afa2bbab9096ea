"""The modern profile's eyes: Florence2, Sam2 and DepthAnything, loaded from their tiny folders.

The tiny Florence-2 says "red car" and boxes it at thousandths (250, 300)-(750, 700)
of whatever it is shown, so captions, OCR and grounding come back through the real
generation, decoding and post-processing (scripts/tiny_models/eyes.py). The tiny SAM
2.1 and Depth Anything are random: what is checked is the contract (sizes, modes,
the union of masks, the depth map's range) and every refusal's words.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gpu_pool import weights as w
from gpu_pool.models import loader
from gpu_pool.models.base import BadRequest, LoadSpec, PoolModel, check_params
from gpu_pool.models.florence import ground
from tests.conftest import boxed_picture, loaded_by_dtype, run_to_the_end

SOURCES = {"Florence2": "florence2", "Sam2": "sam2", "DepthAnything": "depth-anything"}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def load(tiny_dir: Path):
    return loaded_by_dtype(tiny_dir, SOURCES)


@pytest.fixture
def image() -> Image.Image:
    return boxed_picture()


run = run_to_the_end


def refusal(model: PoolModel, params: dict, image: Image.Image) -> str:
    with pytest.raises(BadRequest) as e:
        model.run(check_params(model, params, {}), [image], lambda i, n: None)
    return str(e.value)


# --- Florence2 ---------------------------------------------------------------


@pytest.mark.parametrize("task", ["caption", "detailed_caption", "more_detailed_caption", "ocr"])
def test_florence2_answers_in_words(load, image, task):
    out = run(load("Florence2"), {"task": task}, image)
    assert out.text == "red car" and out.images == [] and out.data is None  # no <s>, </s> nor <loc_*> tokens


@pytest.mark.parametrize("dtype", DTYPES)
def test_florence2_grounds_the_phrase_in_the_images_pixels(load, image, dtype):
    model = load("Florence2", dtype)
    out = run(model, {"task": "grounding", "text": "the red car"}, image)
    # bins (250, 300, 750, 700) of 1,000, at each bin's centre, in the 96x64 image's pixels (not the model's 32 px)
    assert out.data == {"boxes": [[24, 19, 72, 44]], "labels": ["red car"]}
    assert out.text == "red car at [24, 19, 72, 44]" and out.images == []
    wide = run(model, {"task": "grounding", "text": "the red car"}, image.resize((200, 100)))
    assert wide.data["boxes"] == [[50, 30, 150, 70]]
    assert run(model, {"task": "caption"}, image).text == "red car"
    assert all(p.dtype == dtype for p in model.modules()["model"].parameters())


def test_florence2_reads_its_grounding_with_the_repos_task_rules(load):
    """The post-processor's rules come from processor_config.json: "the image" never grounds; one phrase may
    have several boxes; a box less than a bin wide is dropped."""
    processor = load("Florence2").processor
    answer = ("</s><s>red car<loc_0><loc_0><loc_500><loc_500><loc_500><loc_500><loc_999><loc_999>"
              "the image<loc_0><loc_0><loc_999><loc_999>sky<loc_10><loc_10><loc_10><loc_900></s>")
    ids = torch.tensor(processor.tokenizer(answer, add_special_tokens=False).input_ids)
    out = ground(processor, ids, (1000, 500))
    assert out.data == {"boxes": [[0, 0, 500, 250], [500, 250, 999, 499]], "labels": ["red car", "red car"]}
    assert out.text == "red car at [0, 0, 500, 250]; red car at [500, 250, 999, 499]"
    nothing = ground(processor, torch.tensor(processor.tokenizer("</s><s>a car</s>").input_ids), (10, 10))
    assert nothing.data == {"boxes": [], "labels": []} and nothing.text == "nothing found"


NEEDS_TEXT = "Florence2's grounding needs 'text': the phrase to find, e.g. 'the red car'."


@pytest.mark.parametrize("params, message", [
    ({"task": "grounding"}, NEEDS_TEXT),
    ({"task": "grounding", "text": "  "}, NEEDS_TEXT),
    ({"task": "ocr", "text": "a car"},
     "Florence2 takes 'text' only for task 'grounding' (the phrase to find), not for 'ocr'."),
    ({"task": "grounding", "text": "car " * 200}, "'text' must be at most 500 characters, got 799."),
    ({"task": "grounding", "text": "<OCR>"}, "'text' must be plain words, without <...> tokens."),
    ({"task": "grounding", "text": "a car <loc_1>"}, "'text' must be plain words, without <...> tokens."),
])
def test_florence2_says_how_to_fix_a_request(load, image, params, message):
    assert refusal(load("Florence2"), params, image) == message


def test_florence2_names_its_tasks(load):
    with pytest.raises(BadRequest, match="'task' must be one of caption, detailed_caption, more_detailed_caption, "
                                         "ocr, grounding, got 'od'"):
        check_params(load("Florence2"), {"task": "od"}, {})


# --- Sam2 --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_sam2_one_mask_is_the_union_of_the_boxes_masks(load, image, dtype):
    model = load("Sam2", dtype)
    first, second = (np.asarray(run(model, {"boxes": [box]}, image).images[0]) for box in ([20, 10, 60, 50],
                                                                                           [0, 0, 30, 30.5]))
    out = run(model, {"boxes": [[20, 10, 60, 50], [0, 0, 30, 30.5]]}, image)
    [mask] = out.images
    assert mask.mode == "L" and mask.size == image.size and len(out.data["scores"]) == 2
    both = np.asarray(mask)
    assert not np.array_equal(first, second)  # each box its own mask ...
    assert np.abs(both.astype(int) - np.maximum(first, second)).max() <= 1  # ... and two boxes: their union
    assert (both >= 128).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_sam2_masks_from_points(load, image, dtype):
    model = load("Sam2", dtype)
    one = run(model, {"points": [[30, 30]]}, image)  # one point: the surest of SAM 2's three guesses
    on_off = run(model, {"points": [[30, 30], [80, 50]], "point_labels": [1, 0]}, image)
    for out in (one, on_off):
        [mask] = out.images
        assert mask.mode == "L" and mask.size == image.size and len(out.data["scores"]) == 1
    both_on = run(model, {"points": [[30, 30], [80, 50]]}, image)  # labels default to 1: both on the object
    assert not np.array_equal(np.asarray(both_on.images[0]), np.asarray(on_off.images[0]))


INSIDE = "x from 0 to 96, y from 0 to 64"


@pytest.mark.parametrize("params, message", [
    ({"boxes": [[10, 10, 100, 20]]}, f"box [10, 10, 100, 20] is outside the 96x64 image ({INSIDE})."),
    ({"boxes": [[-1, 0, 10, 10]]}, f"box [-1, 0, 10, 10] is outside the 96x64 image ({INSIDE})."),
    ({"boxes": [[50, 10, 20, 40]]}, "box [50, 10, 20, 40] must have x1 > x0 and y1 > y0 ([x0, y0, x1, y1]: its "
                                    "top-left corner, then its bottom-right one)."),
    ({"boxes": [[10, 40, 20, 40]]}, "box [10, 40, 20, 40] must have x1 > x0 and y1 > y0 ([x0, y0, x1, y1]: its "
                                    "top-left corner, then its bottom-right one)."),
    ({"boxes": [[1, 2, 3]]}, "'boxes' must be a list of 1 to 64 [x0, y0, x1, y1] lists of numbers (pixels)."),
    ({"points": [[10.5, 64.5]]}, f"point [10.5, 64.5] is outside the 96x64 image ({INSIDE})."),
    ({"points": [[1, 2], [3, 4]], "point_labels": [1]},
     "'point_labels' must hold one label per point (2): 1 = on the object, 0 = background."),
    ({"points": [[1, 2]], "point_labels": [2]},
     "'point_labels' must hold one label per point (1): 1 = on the object, 0 = background."),
    ({"boxes": [[1, 2, 3, 4]], "point_labels": [1]}, "'point_labels' go with 'points' (one label per point)."),
    ({"boxes": [[1, 2, 3, 4]], "points": [[1, 2]]}, "Sam2 takes either 'boxes' or 'points' (not both, not neither)."),
    ({}, "Sam2 takes either 'boxes' or 'points' (not both, not neither)."),
])
def test_sam2_says_how_to_fix_bad_prompts(load, image, params, message):
    assert refusal(load("Sam2"), params, image) == message


# --- DepthAnything -----------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_depth_anything_maps_depth_as_the_seeds_image2depth(load, image, dtype):
    model = load("DepthAnything", dtype)
    out = run(model, {}, image)
    [depth] = out.images
    assert depth.mode == "RGB" and depth.size == image.size and out.text is None
    r, g, b = (np.asarray(depth)[..., i] for i in range(3))
    assert np.array_equal(r, g) and np.array_equal(g, b)  # grey
    assert (r.min(), r.max()) == (0, 255)  # stretched: the farthest point black, the nearest white
    assert all(p.dtype == dtype for p in model.modules()["model"].parameters())


def test_depth_anything_near_is_bright(load, image):
    """The network's output (larger: nearer) is what the map shows: white where it is largest."""
    from transformers import AutoImageProcessor

    model = load("DepthAnything")
    [depth] = run(model, {}, image).images
    pixels = AutoImageProcessor.from_pretrained(model.source)(images=image, return_tensors="pt").pixel_values
    with torch.inference_mode():
        predicted = model.modules()["model"](pixel_values=pixels).predicted_depth
    near = torch.nn.functional.interpolate(predicted[None], size=(64, 96), mode="bicubic")[0, 0]
    y, x = np.unravel_index(int(near.argmax()), near.shape)
    far_y, far_x = np.unravel_index(int(near.argmin()), near.shape)
    assert np.asarray(depth)[y, x, 0] == 255 and np.asarray(depth)[far_y, far_x, 0] == 0


# --- what a fetch brings is what the loaders read ------------------------------


@pytest.mark.parametrize("name", list(SOURCES))
def test_the_fetched_files_load_and_nothing_else_is_fetched(tiny_dir, tmp_path, image, name):
    """Only the files ``weights.plan`` names (those the hub repo holds) are copied, as a fetch downloads
    them: the model loads and runs from them, and the repo's other files (SAM 2.1's original .pt and .yaml,
    the model card) are not among them."""
    import settings

    repo = tiny_dir / "hub" / settings.MODEL_DEFAULTS[name]
    [want] = w.plan(name, str(repo), "")
    names = [f for f in want.files if (repo / f).exists()] + [w.pick(str(repo), weights, "float16")
                                                              for weights in want.weights]
    for f in names:
        shutil.copy(repo / f, tmp_path / f)
    left = {p.name for p in repo.iterdir()} - set(names)
    assert left == ({"README.md", "sam2.1_hiera_base_plus.pt", "sam2.1_hiera_b+.yaml"} if name == "Sam2"
                    else {"README.md"})
    model = loader(name)(LoadSpec(name, str(tmp_path), "cpu", torch.float16, sd_base=""), None)
    params = {"boxes": [[20, 10, 60, 50]]} if name == "Sam2" else {}
    out = run(model, params, image)
    assert out.text == "red car" if name == "Florence2" else [im.size for im in out.images] == [image.size]
