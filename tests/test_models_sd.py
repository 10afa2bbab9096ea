"""The Stable Diffusion family on tiny random-weight checkpoints, loaded and run through the real code."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from gpu_pool import accounting
from gpu_pool.models import load_sd_base, loader
from gpu_pool.models.base import BadRequest, JobCancelled, LoadSpec, PoolModel, SharedBases, check_params
from tests.conftest import loaded_once

# name -> folder under tiny_dir
FOLDERS = {
    "Text2Image": "sd15",
    "InstructPix2Pix": "pix2pix",
    "Inpainting": "inpaint",
    "CannyText2Image": "controlnet-canny",
    "LineText2Image": "controlnet-mlsd",
    "HedText2Image": "controlnet-hed",
    "ScribbleText2Image": "controlnet-scribble",
    "PoseText2Image": "controlnet-openpose",
    "SegText2Image": "controlnet-seg",
    "DepthText2Image": "controlnet-depth",
    "NormalText2Image": "controlnet-normal",
}
CONTROLNETS = [n for n in FOLDERS if n.endswith("Text2Image") and n != "Text2Image"]
LIMITS = {"max_steps": 50, "max_output_size": 256}
W, H = 64, 96  # not square, so a width/height swap shows


def spec(tiny_dir, name: str, dtype: torch.dtype = torch.float32, working_size: int = H) -> LoadSpec:
    """At a working size of 96 px a 64x96 input is already the size the models work at."""
    return LoadSpec(name, str(tiny_dir / FOLDERS[name]), "cpu", dtype, str(tiny_dir / "sd15"),
                    working_size=working_size)


@pytest.fixture(scope="module")
def load(tiny_dir, bases):
    """load(name) -> the model, loaded once per module on the shared float32 base."""
    return loaded_once(lambda name: spec(tiny_dir, name), bases)


def inputs(name: str, size: tuple[int, int] = (W, H)) -> list[Image.Image]:
    """Input images the model takes: none, one RGB image, or image + white-means-repaint mask."""
    if name == "Text2Image":
        return []
    image = Image.new("RGB", size, (200, 120, 40))
    if name == "Inpainting":
        mask = Image.new("L", size, 0)
        mask.paste(255, (0, 0, size[0] // 2, size[1] // 2))
        return [image, mask]
    return [image]


def run(model: PoolModel, progress=lambda i, n: None, images=None, **params):
    params = {"prompt": "a cat on the sofa", "steps": 2, **params}
    if model.name == "Text2Image":
        params.setdefault("width", W)
        params.setdefault("height", H)
    with torch.inference_mode():  # as the pool's device thread runs it
        images = inputs(model.name) if images is None else images
        return model.run(check_params(model, params, LIMITS), images, progress)


def data_ptrs(module: torch.nn.Module) -> set[int]:
    return {p.data_ptr() for p in module.parameters()}


# --- running ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FOLDERS)
def test_runs_with_progress(load, name):
    model = load(name)
    calls = []
    out = run(model, lambda i, n: calls.append((i, n)), seed=1)
    assert [(im.size, im.mode) for im in out.images] == [((W, H), "RGB")]
    assert calls == [(1, 2), (2, 2)]  # Text2Image too, though its PNDM scheduler makes a third warm-up pass


@pytest.mark.parametrize("name", ["Text2Image", "InstructPix2Pix", "Inpainting", "CannyText2Image"])
def test_cancel_stops_the_run(load, name):
    calls = []

    def cancel(i, n):
        calls.append(i)
        raise JobCancelled()

    with pytest.raises(JobCancelled):
        run(load(name), cancel, steps=3)
    assert calls == [1]


def test_seed_makes_it_reproducible(load):
    model = load("Inpainting")
    a, b, c = (run(model, seed=s).images[0].tobytes() for s in (7, 7, 8))
    assert a == b != c


def test_controlnet_follows_the_condition_image(load):
    model = load("CannyText2Image")
    edges = Image.new("RGB", (W, H))
    edges.paste((255, 255, 255), (16, 16, 48, 80))
    plain, framed = (run(model, images=[im], seed=3).images[0].tobytes() for im in (Image.new("RGB", (W, H)), edges))
    assert plain != framed


# --- sharing one base ---------------------------------------------------------------------


def test_controlnets_share_the_text2image_weights(load):
    t2i = load("Text2Image").pipe
    for name in CONTROLNETS:
        pipe = load(name).pipe
        for part in ("unet", "vae", "text_encoder"):
            assert data_ptrs(getattr(pipe, part)) == data_ptrs(getattr(t2i, part)), (name, part)
    canny, hed = load("CannyText2Image").pipe.controlnet, load("HedText2Image").pipe.controlnet
    assert data_ptrs(canny).isdisjoint(data_ptrs(hed))


@pytest.mark.parametrize("name", ["InstructPix2Pix", "Inpainting"])
def test_edit_models_share_vae_and_text_encoder_only(load, bases, tiny_dir, name):
    base = bases.get(str(tiny_dir / "sd15"), "cpu", torch.float32)
    pipe = load(name).pipe
    assert data_ptrs(pipe.vae) == data_ptrs(base.vae)
    assert data_ptrs(pipe.text_encoder) == data_ptrs(base.text_encoder)
    assert data_ptrs(pipe.unet).isdisjoint(data_ptrs(base.unet))
    assert pipe.scheduler is not base.scheduler


def test_each_pipeline_has_its_own_scheduler(load):
    schedulers = [load(name).pipe.scheduler for name in FOLDERS]
    assert len({id(s) for s in schedulers}) == len(schedulers)
    kinds = {name: type(load(name).pipe.scheduler).__name__
             for name in ("Text2Image", "InstructPix2Pix", "Inpainting", "CannyText2Image")}
    assert kinds == {"Text2Image": "PNDMScheduler", "InstructPix2Pix": "EulerAncestralDiscreteScheduler",
                     "Inpainting": "DDIMScheduler", "CannyText2Image": "UniPCMultistepScheduler"}


def test_accounting_counts_shared_weights_once(load):
    names = ["Text2Image", "CannyText2Image", "HedText2Image", "InstructPix2Pix"]
    mods = {name: load(name).modules() for name in names}
    assert set(mods["CannyText2Image"]) == {"unet", "vae", "text_encoder", "controlnet"}
    sizes = accounting.model_bytes({name: list(m.values()) for name, m in mods.items()})
    t2i = mods["Text2Image"]
    vae_and_text = accounting.unique_bytes([t2i["vae"], t2i["text_encoder"]])
    base = accounting.unique_bytes([t2i["unet"], t2i["vae"], t2i["text_encoder"]])

    assert sizes["Text2Image"] == (base, base)  # all of it is shared
    for name in ("CannyText2Image", "HedText2Image"):
        own, shared = sizes[name]
        assert shared == base
        assert own - shared == accounting.unique_bytes([mods[name]["controlnet"]]) > 0
    own, shared = sizes["InstructPix2Pix"]
    assert shared == vae_and_text
    assert own - shared == accounting.unique_bytes([mods["InstructPix2Pix"]["unet"]]) > 0
    # Everything loaded holds one base, two ControlNets and one extra UNet.
    total = accounting.unique_bytes([m for mm in mods.values() for m in mm.values()])
    assert total == base + sum(sizes[n][0] - sizes[n][1] for n in names)


def test_float16_base_stays_float16(tiny_dir):
    """The from_pipe trap: without a dtype it casts the shared modules to float32 in place."""
    bases = SharedBases(load_sd_base)
    cn = loader("CannyText2Image")(spec(tiny_dir, "CannyText2Image", torch.float16), bases)
    t2i = loader("Text2Image")(spec(tiny_dir, "Text2Image", torch.float16), bases)
    base = bases.get(str(tiny_dir / "sd15"), "cpu", torch.float16)
    for pipe in (base, cn.pipe, t2i.pipe):
        assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float16}
    assert cn.pipe.controlnet.dtype == torch.float16
    assert cn.pipe.unet is base.unet and t2i.pipe.unet is base.unet


# --- input checks -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["InstructPix2Pix", "Inpainting", "CannyText2Image"])
@pytest.mark.parametrize("size, made", [((1, 1), (96, 96)), ((7, 3), (96, 40)), ((70, 64), (96, 88)),
                                        ((48, 32), (96, 64))])
def test_any_input_size_is_fitted_to_the_working_size(load, name, size, made):
    """A 1x1 dot, a 7x3 sliver or a small photo is drawn at the working size (96 px here; 512 for SD1.5)."""
    out = run(load(name), images=inputs(name, size))
    assert [im.size for im in out.images] == [made]


@pytest.mark.parametrize("name", ["InstructPix2Pix", "Inpainting"])
def test_an_input_larger_than_the_working_size_comes_back_at_its_size(load, name):
    out = run(load(name), images=inputs(name, (200, 136)))
    assert out.images[0].size == (200, 136)


def test_fit_size_is_the_seeds_up_or_down_to_the_long_side():
    from gpu_pool.models.sd import canvas_size, fit_size

    assert fit_size(256, 256, 512) == (512, 512)  # up
    assert fit_size(2048, 1024, 512) == (512, 256)  # down
    assert fit_size(7, 3, 512) == (512, 216)  # multiples of 8, aspect kept
    assert fit_size(1, 1000, 512) == (8, 512)  # a sliver keeps its aspect: padded, not squashed
    assert canvas_size((8, 512), 512) == (128, 512)  # ... to a canvas with a usable short side


@pytest.mark.parametrize("name", ["InstructPix2Pix", "Inpainting", "CannyText2Image"])
@pytest.mark.parametrize("size, made", [((80, 2), (96, 8)), ((19, 8), (96, 40)), ((3, 80), (8, 96))])
def test_a_sliver_is_edited_in_its_own_shape(load, name, size, made):
    """Issue 26: a banner (4000x100, stored 512x13) came back 4:1, squashed to a quarter of the working size."""
    out = run(load(name), images=inputs(name, size))
    assert [im.size for im in out.images] == [made]


def test_binary_condition_maps_stay_binary_when_fitted(load):
    """An edge map scaled up for ControlNet keeps hard edges (nearest-neighbour), as ControlNet was trained on."""
    edges = Image.new("RGB", (33, 22))
    edges.paste((255, 255, 255), (5, 5, 20, 6))
    edges.paste((255, 255, 255), (9, 3, 10, 18))
    model = load("CannyText2Image")
    fitted = edges.resize((96, 64), Image.Resampling.NEAREST)
    assert set(fitted.convert("L").getdata()) == {0, 255}
    small, big = (run(model, images=[im], seed=3).images[0] for im in (edges, fitted))
    assert small.size == big.size == (96, 64)
    assert small.tobytes() == big.tobytes()  # the pipeline saw the same black-and-white map


def test_vae_tiling_only_for_outputs_over_768_px(load):
    model = load("Text2Image")
    tiling = []
    limits = {"max_steps": 50, "max_output_size": 1024}
    for width in (768, 832):
        params = check_params(model, {"prompt": "a cat", "steps": 1, "width": width, "height": 64}, limits)
        with torch.inference_mode():
            out = model.run(params, [], lambda i, n: tiling.append(model.pipe.vae.use_tiling))
        assert out.images[0].size == (width, 64)
    assert tiling == [False, True]
    assert model.pipe.vae.use_tiling is False  # off again for the next job on the shared VAE


def test_mask_must_match_the_image(load):
    image, _ = inputs("Inpainting")
    mask = Image.new("L", (W, W), 255)
    with pytest.raises(BadRequest) as e:
        run(load("Inpainting"), images=[image, mask])
    assert str(e.value) == ("Inpainting needs a mask the size of the image: the image is 64x96, the mask 64x64; "
                            "make the mask from the same image.")


@pytest.mark.parametrize("steps", [0, 51])
def test_steps_out_of_range(load, steps):
    with pytest.raises(BadRequest) as e:
        check_params(load("CannyText2Image"), {"prompt": "a cat", "steps": steps}, LIMITS)
    assert str(e.value) == f"'steps' must be between 1 and 50, got {steps}"


@pytest.mark.parametrize("name", ["Text2Image", "InstructPix2Pix", "Inpainting", "DepthText2Image"])
def test_prompt_is_required(load, name):
    with pytest.raises(BadRequest, match="'prompt'"):
        check_params(load(name), {"steps": 2}, LIMITS)


def test_defaults_are_the_seeds(load):
    keys = ("steps", "guidance", "image_guidance", "width", "height")
    defaults = {name: {k: p.default for k, p in load(name).params.items() if k in keys}
                for name in ("Text2Image", "InstructPix2Pix", "Inpainting", "CannyText2Image")}
    assert defaults == {
        "Text2Image": {"steps": 50, "guidance": 7.5, "width": 512, "height": 512},
        "InstructPix2Pix": {"steps": 40, "guidance": 7.5, "image_guidance": 1.2},
        "Inpainting": {"steps": 50, "guidance": 7.5},
        "CannyText2Image": {"steps": 20, "guidance": 9.0},
    }
    assert (load("Inpainting").n_images, load("Inpainting").image_names) == (2, ("image", "mask"))


def test_defaults_over_the_configured_caps_are_capped(load):
    """A bot whose admin allows 30 steps runs the seed's 50-step default at 30, not an error."""
    params = check_params(load("Text2Image"), {"prompt": "a cat"}, {"max_steps": 30, "max_output_size": 256})
    assert (params["steps"], params["width"], params["height"]) == (30, 256, 256)
    params = check_params(load("CannyText2Image"), {"prompt": "a cat"}, {"max_steps": 30})
    assert params["steps"] == 20  # under the cap: the seed's default stands
