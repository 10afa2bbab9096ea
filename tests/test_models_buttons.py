"""The two pool models behind the image buttons, on tiny random weights through the real loaders:
Variations (img2img on the shared SD1.5 base) and Upscale (the 2x latent upscaler, its own weights)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from gpu_pool.models import load_sd_base, loader
from gpu_pool.models.base import JobCancelled, LoadSpec, PoolModel, SharedBases, check_params
from tests.conftest import loaded_once

LIMITS = {"max_steps": 50, "max_output_size": 256}


def spec(tiny_dir, name: str, dtype: torch.dtype = torch.float32) -> LoadSpec:
    source = {"Variations": "", "Upscale": str(tiny_dir / "upscaler"), "Text2Image": str(tiny_dir / "sd15")}[name]
    return LoadSpec(name, source, "cpu", dtype, str(tiny_dir / "sd15"), working_size=96)  # 64x96: as it is


@pytest.fixture(scope="module")
def load(tiny_dir, bases):
    return loaded_once(lambda name: spec(tiny_dir, name), bases)


def picture(w: int = 64, h: int = 96) -> Image.Image:
    img = Image.new("RGB", (w, h), (40, 90, 160))
    ImageDraw.Draw(img).rectangle([8, 8, w // 2, h // 2], fill=(230, 200, 40))
    return img


def run(model: PoolModel, image: Image.Image, progress=lambda i, n: None, **params):
    with torch.inference_mode():
        return model.run(check_params(model, {"steps": 2, "seed": 1, **params}, LIMITS), [image], progress)


def ptrs(module: torch.nn.Module) -> set[int]:
    return {p.data_ptr() for p in module.parameters()}


# --- Variations ------------------------------------------------------------------------------


def test_variations_share_the_base_and_keep_the_size(load):
    variations, t2i = load("Variations"), load("Text2Image")
    for part in ("unet", "vae", "text_encoder"):
        assert ptrs(getattr(variations.pipe, part)) == ptrs(getattr(t2i.pipe, part)), part
    assert variations.pipe.scheduler is not t2i.pipe.scheduler
    assert variations.draws and variations.source.endswith("sd15")  # no weights of its own: the base's
    calls = []
    out = run(variations, picture(), lambda i, n: calls.append((i, n)), steps=5, strength=0.6)
    assert [(im.size, im.mode) for im in out.images] == [((64, 96), "RGB")]
    assert calls == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]  # the steps that run (of a 9-step schedule at 0.6)
    sent = variations.prompts(check_params(variations, {}, LIMITS))
    assert sent["prompt"] == "best quality, extremely detailed"  # no prompt given: the quality words alone
    assert sent["negative_prompt"].startswith("longbody, lowres")
    small = run(variations, picture(32, 48))  # under the working size: drawn at it, as the other SD tools
    assert small.images[0].size == (64, 96)


def test_each_seed_is_another_variation(load):
    a, b, c = (run(load("Variations"), picture(), seed=s).images[0].tobytes() for s in (5, 5, 6))
    assert a == b != c


def test_variations_keep_a_float16_base_float16(tiny_dir):
    """The from_pipe trap (RECIPES): without a dtype it would cast the shared modules to float32 in place."""
    bases = SharedBases(load_sd_base)
    variations = loader("Variations")(spec(tiny_dir, "Variations", torch.float16), bases)
    base = bases.get(str(tiny_dir / "sd15"), "cpu", torch.float16)
    assert {base.unet.dtype, base.vae.dtype, base.text_encoder.dtype} == {torch.float16}
    assert variations.pipe.unet is base.unet


# --- Upscale ---------------------------------------------------------------------------------


def test_upscale_doubles_the_size_with_its_own_weights(load):
    upscale, t2i = load("Upscale"), load("Text2Image")
    assert upscale.draws and upscale.source.endswith("upscaler")
    assert set(upscale.modules()) == {"unet", "vae", "text_encoder"}
    for part in ("vae", "text_encoder", "unet"):
        assert ptrs(upscale.modules()[part]).isdisjoint(ptrs(t2i.modules()[part])), part
    calls = []
    out = run(upscale, picture(), lambda i, n: calls.append((i, n)), steps=3)
    assert [(im.size, im.mode) for im in out.images] == [((128, 192), "RGB")]
    assert calls == [(1, 3), (2, 3), (3, 3)]
    params = check_params(upscale, {"prompt": "a house", "negative_prompt": "blur"}, LIMITS)
    assert upscale.prompts(params) == {"prompt": "", "negative_prompt": ""}  # no guidance (the default): unused
    assert upscale.prompts({**params, "guidance": 2.0}) == {"prompt": "a house", "negative_prompt": "blur"}


def test_upscale_pads_sides_the_unet_cannot_halve_and_crops_back(load):
    upscale = load("Upscale")
    assert 72 % upscale.multiple and 56 % upscale.multiple  # the tiny UNet needs multiples of 16
    out = run(upscale, picture(72, 56))
    assert out.images[0].size == (144, 112)  # not fitted to the working size (96): the core sizes its input


def test_upscale_seed_and_cancel(load):
    upscale = load("Upscale")
    a, b, c = (run(upscale, picture(), seed=s).images[0].tobytes() for s in (3, 3, 4))
    assert a == b != c

    def cancel(i, n):
        raise JobCancelled()

    with pytest.raises(JobCancelled):
        run(upscale, picture(), cancel)


def test_defaults(load):
    assert check_params(load("Upscale"), {}, LIMITS) == {"prompt": "", "negative_prompt": "", "steps": 20,
                                                         "guidance": 0.0, "seed": None}
    variations = check_params(load("Variations"), {}, LIMITS)
    assert (variations["strength"], variations["steps"], variations["guidance"]) == (0.6, 30, 7.5)
    calls = []
    run(load("Variations"), picture(), lambda i, n: calls.append((i, n)), steps=1, strength=0.05)
    assert calls == [(1, 1)]  # one step, never none, however low the strength
