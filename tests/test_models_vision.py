"""The vision pool models (BLIP, CLIPSeg, the annotators), loaded from tiny random-weight folders.

The loaders are the real ones: the same ``from_pretrained`` that reads a hub id
reads the tiny folder. Outputs are gibberish; what is checked is the contract:
text comes back as text, images come back the input's size and mode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from gpu_pool import accounting
from gpu_pool.models import load_sd_base, loader
from gpu_pool.models.base import BadRequest, LoadSpec, PoolModel, SharedBases, check_params

# model name -> folder under tiny_dir ("" = no weights)
SOURCES = {
    "ImageCaptioning": "blip-caption",
    "VisualQuestionAnswering": "blip-vqa",
    "Text2Mask": "clipseg",
    "Image2Canny": "",
    "Image2Line": "annotators",
    "Image2Hed": "annotators",
    "Image2Scribble": "annotators",
    "Image2Pose": "annotators",
    "Image2Seg": "upernet",
    "Image2Depth": "dpt",
    "Image2Normal": "dpt",
}
ANNOTATORS = [name for name in SOURCES if name.startswith("Image2")]
SMALL = 128  # detect_resolution for the controlnet_aux detectors: their real-size nets at 512 px take seconds


@pytest.fixture(scope="module")
def load(tiny_dir: Path):
    """Load a model by seed name from its tiny folder, once per module."""
    bases = SharedBases(load_sd_base)  # none of these loaders use it
    loaded: dict[str, PoolModel] = {}

    def get(name: str) -> PoolModel:
        if name not in loaded:
            folder = SOURCES[name]
            spec = LoadSpec(name, source=str(tiny_dir / folder) if folder else "", device="cpu",
                            dtype=torch.float32, sd_base="")
            loaded[name] = loader(name)(spec, bases)
        return loaded[name]

    return get


@pytest.fixture
def image() -> Image.Image:
    """96x64 (wider than tall): a gradient sky, a yellow box and a white diagonal."""
    ramp = np.linspace(40, 200, 96, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (64, 1)), np.full((64, 96), 90, np.uint8), np.tile(ramp[::-1], (64, 1))], axis=2)
    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    draw.rectangle((20, 10, 60, 50), fill=(230, 200, 40))
    draw.line((0, 63, 95, 0), fill=(255, 255, 255), width=3)
    return img


def run(model: PoolModel, params: dict, images: list[Image.Image]):
    steps: list[tuple[int, int]] = []
    out = model.run(check_params(model, params, {}), images, lambda i, n: steps.append((i, n)))
    assert steps and steps[-1][0] == steps[-1][1], "the last progress report is the final step"
    return out


# --- BLIP --------------------------------------------------------------------


def test_captioning_returns_text(load, image):
    out = run(load("ImageCaptioning"), {}, [image])
    assert isinstance(out.text, str) and out.images == []


def test_vqa_returns_text(load, image):
    out = run(load("VisualQuestionAnswering"), {"question": "what color is the box?"}, [image])
    assert isinstance(out.text, str) and out.text == out.text.strip()  # may be empty from random weights


def test_vqa_without_a_question_names_it(load):
    with pytest.raises(BadRequest, match="'question'"):
        check_params(load("VisualQuestionAnswering"), {}, {})


# --- CLIPSeg -----------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.5, 0.0, 1.0])
def test_text2mask_is_a_binary_mask_of_the_input_size(load, image, threshold):
    out = run(load("Text2Mask"), {"prompt": "the box", "threshold": threshold}, [image])
    [mask] = out.images
    assert mask.mode == "L" and mask.size == image.size
    values = set(np.unique(np.asarray(mask)).tolist())
    assert values <= {0, 255}
    share = np.count_nonzero(np.asarray(mask)) / (image.width * image.height)
    if threshold == 1.0:  # sigmoid never exceeds 1: nothing selected
        assert values == {0} and out.text == "no mask: nothing selected"
    else:
        assert out.text == f"mask covers {share:.0%} of the image"


def test_text2mask_rejects_threshold_out_of_range(load):
    with pytest.raises(BadRequest) as e:
        check_params(load("Text2Mask"), {"prompt": "the dog", "threshold": 1.5}, {})
    assert str(e.value) == "'threshold' must be between 0 and 1, got 1.5"


# --- annotators --------------------------------------------------------------


@pytest.mark.parametrize("name", ANNOTATORS)
def test_annotator_returns_rgb_map_of_the_input_size(load, image, name):
    model = load(name)
    assert model.n_images == 1
    params = {"detect_resolution": SMALL} if "detect_resolution" in model.params else {}
    [out] = run(model, params, [image]).images
    assert out.mode == "RGB" and out.size == image.size
    if name == "Image2Canny":
        assert model.modules() == {}
    else:  # the byte accounting sees the networks
        assert accounting.unique_bytes(model.modules().values()) > 0


def test_canny_thresholds_change_the_edges(load, image):
    model = load("Image2Canny")
    faint = image.copy()
    ImageDraw.Draw(faint).rectangle((66, 20, 90, 40), fill=(150, 120, 110))  # a low-contrast box
    default = np.asarray(run(model, {}, [faint]).images[0])
    strict = np.asarray(run(model, {"low_threshold": 250, "high_threshold": 255}, [faint]).images[0])
    assert default.any() and not np.array_equal(default, strict)


def test_canny_runs_at_the_images_own_size(load, image):
    """The seed's cv2.Canny on the image as it is: no detour through 512 px and back."""
    import cv2

    [out] = run(load("Image2Canny"), {}, [image]).images
    expected = cv2.Canny(np.asarray(image), 100, 200)
    assert np.array_equal(np.asarray(out)[..., 0], expected)


@pytest.mark.parametrize("name", ["Image2Canny", "Image2Line", "Image2Scribble"])
@pytest.mark.parametrize("size", [(96, 64), (101, 77)])
def test_edge_line_and_scribble_maps_are_black_and_white(load, image, name, size):
    """Detected at another resolution and scaled back, the map still has two levels, not 115 greys."""
    model = load(name)
    params = {"detect_resolution": SMALL} if "detect_resolution" in model.params else {}
    [out] = run(model, params, [image.resize(size)]).images
    assert out.size == size
    assert set(np.unique(np.asarray(out)).tolist()) <= {0, 255}


def test_pose_loads_hands_and_face_only_when_asked(load, image):
    model = load("Image2Pose")
    assert set(model.modules()) == {"body"}
    run(model, {"detect_resolution": SMALL}, [image])
    assert set(model.modules()) == {"body"}
    run(model, {"detect_resolution": SMALL, "hands": True, "face": True}, [image])
    assert set(model.modules()) == {"body", "hand", "face"}
    assert all(p.device.type == "cpu" for m in model.modules().values() for p in m.parameters())


def test_depth_is_grey_and_seg_uses_the_ade_palette(load, image):
    from controlnet_aux.util import ade_palette

    depth = np.asarray(run(load("Image2Depth"), {}, [image]).images[0])
    assert (depth[..., 0] == depth[..., 1]).all() and (depth[..., 1] == depth[..., 2]).all()
    seg = np.asarray(run(load("Image2Seg"), {}, [image]).images[0])
    assert {tuple(c) for c in seg.reshape(-1, 3).tolist()} <= {tuple(c) for c in ade_palette()}


def test_normal_points_towards_the_viewer(load, image):
    normal = np.asarray(run(load("Image2Normal"), {}, [image]).images[0])
    assert normal[..., 2].min() >= 127  # z = 2*pi > 0 everywhere, as in the seed
