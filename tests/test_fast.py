"""The diffusion fast path (gpu_pool/fast.py) on tiny random-weight models on the CPU (``fast = "on"``):
what it does to the modules, that drawings stay what they were, a size not warmed up, ``fast = "off"``,
klein's step cache, and the compile cache a second pool start finds."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re

import numpy as np
import pytest
import torch
from PIL import Image

import settings
from gpu_pool import fast
from gpu_pool.models import load_sd_base
from gpu_pool.models.base import LoadSpec, SharedBases, check_params, no_progress
from gpu_pool.fast import Fast
from gpu_pool.registry import Entry, Registry, _load_sync
from testkit.pool import spawn_pool, stop_pool, Pool
from tests.conftest import loaded_once

WARM = 64  # [pool] warmup_sizes here: one tiny size


def spec(tiny_dir, name: str, folder: str = "sd15") -> LoadSpec:
    return LoadSpec(name, str(tiny_dir / folder), "cpu", torch.float32, str(tiny_dir / "sd15"), working_size=WARM,
                    max_output_size=128)


def load_fast(spec_: LoadSpec, speed: Fast):
    """``spec_``'s model through the registry's load, the fast path and its warm-up included, on bases of its own."""
    entry = Entry(spec_.name, spec_.device, "float32", spec_.source)
    return _load_sync(spec_, SharedBases(load_sd_base), None, entry, None, speed)


@pytest.fixture(scope="module")
def plain(tiny_dir, bases):
    return loaded_once(lambda name: spec(tiny_dir, name), bases)


@pytest.fixture(scope="module")
def fast_t2i(tiny_dir, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCHINDUCTOR_CACHE_DIR", "")  # restored after this module
    cache = fast.use_cache(tmp_path_factory.mktemp("data"), "on")
    yield load_fast(spec(tiny_dir, "Text2Image"), Fast((WARM,), 0.0, cache))
    mp.undo()


def draw(model, width: int = WARM, height: int = WARM, **extra):
    params = check_params(model, {"prompt": "a red house", "steps": 2, "seed": 3, "width": width, "height": height,
                                  **extra}, {})
    with torch.inference_mode():  # as the pool's device thread runs it
        return model.run(params, [], no_progress).images[0]


def test_the_fast_path_changes_the_unet_and_vae_and_draws_what_diffusers_draws(fast_t2i, plain):
    unet, vae = fast_t2i.pipe.unet, fast_t2i.pipe.vae
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(hasattr(a, "to_qkv") or hasattr(a, "to_kv") for a in _attentions(unet))
    assert all("Fused" in type(p).__name__ for p in unet.attn_processors.values())
    blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert blocks and fast.compiled(unet) == blocks  # the repeated blocks, nothing else
    assert getattr(unet, fast.MARK) == ["channels_last", "fused qkv", "compiled blocks"]

    quick, slow = np.asarray(draw(fast_t2i), np.int16), np.asarray(draw(plain("Text2Image")), np.int16)
    assert quick.shape == slow.shape == (WARM, WARM, 3) and quick.std() > 0  # a picture, not a flat field
    assert np.abs(quick - slow).max() <= 3  # the same drawing, but for rounding


def test_a_shared_module_gets_the_fast_path_once(fast_t2i):
    again = fast.apply(fast_t2i)  # as a second model on the same base would
    assert "unet: compiled blocks" in again
    assert getattr(fast_t2i.pipe.unet, fast.MARK) == ["channels_last", "fused qkv", "compiled blocks"]
    assert all(p.is_contiguous(memory_format=torch.channels_last) or p.dim() != 4
               for p in fast_t2i.pipe.unet.parameters())


def test_a_size_not_warmed_up_still_draws(fast_t2i):
    image = draw(fast_t2i, 96, 64)  # compiles anew, or runs eagerly: never fails
    assert image.size == (96, 64) and np.asarray(image).std() > 0


def test_a_size_past_the_recompile_limit_runs_eagerly(fast_t2i):
    import torch._dynamo

    assert not torch._dynamo.config.fail_on_recompile_limit_hit and torch._dynamo.config.suppress_errors
    with torch._dynamo.config.patch(recompile_limit=1):  # every block has compiled once: the limit is hit
        assert draw(fast_t2i, 80, 72).size == (80, 72)


def test_under_a_budget_the_warm_up_runs_with_the_weights_on_the_device_or_is_skipped(fast_t2i, caplog):
    from gpu_pool.residency import Residency

    caplog.set_level(logging.INFO, logger="gpu_pool.fast")
    roomy = Residency("cpu", 10**12)
    assert fast.warm_up(fast_t2i, (WARM,), roomy, None) is not None
    assert roomy.stats["jobs"] == 1 and roomy.is_resident(fast_t2i.modules().values())
    tight = Residency("cpu", 1000)  # the model alone is larger than the budget: skipped, with a log line
    assert fast.warm_up(fast_t2i, (WARM,), tight, None) is None
    assert "Text2Image: warm-up skipped" in caplog.text
    assert fast.compiled(fast_t2i.pipe.unet)  # still on: its first job of each size compiles


def test_a_denoiser_without_repeated_blocks_loads_uncompiled_and_upscales(tiny_dir, caplog):
    """The upscaler's UNet has no transformer blocks (found by starting the bot with fast = "on": Upscale
    failed to load): it gets the rest of the fast path, runs eagerly, warms up and upscales."""
    caplog.set_level(logging.INFO, logger="gpu_pool.fast")
    model = load_fast(spec(tiny_dir, "Upscale", "upscaler"), Fast((WARM,), 0, None))
    marks = getattr(model.pipe.unet, fast.MARK)
    assert "compiled blocks" not in marks and not fast.compiled(model.pipe.unet)
    assert "Upscale's unet: no repeated blocks to compile" in caplog.text and "Upscale: warm-up at" in caplog.text
    params = check_params(model, {"prompt": "sharp", "steps": 2}, {})
    with torch.inference_mode():
        out = model.run(params, [Image.new("RGB", (32, 32), (90, 120, 200))], no_progress).images[0]
    assert out.width > 32


def test_fast_off_leaves_the_modules_as_diffusers_made_them(tiny_dir, tmp_path):
    config = dataclasses.replace(settings.load(_config(tmp_path, "off"), env_check=False))
    registry = Registry(config)
    try:
        assert fast.settings(config.pool, "cpu", None) is None and registry.compile_cache is None
        assert not (tmp_path / "data" / fast.CACHE).exists()
    finally:
        registry.close()
    model = load_fast(spec(tiny_dir, "Text2Image"), None)
    unet = model.pipe.unet
    assert not hasattr(unet, fast.MARK) and not fast.compiled(unet) and not fast.compiled(model.pipe.vae)
    assert unet.conv_in.weight.is_contiguous()  # not channels_last
    assert not any(hasattr(a, "to_qkv") for a in _attentions(unet))
    assert fast.enabled("auto", "cuda:0") and not fast.enabled("auto", "cpu") and fast.enabled("on", "cpu")


@pytest.mark.slow  # compiles klein's blocks: about 40 s on 2 cores
def test_klein_with_the_step_cache_predicts_steps_and_still_draws(tiny_dir, fast_t2i):
    """``step_cache = 2``: klein's transformer gets diffusers' TaylorSeer cache; a 6-step drawing predicts some
    steps (it differs from the exact one), and is still a picture."""
    klein_spec = dataclasses.replace(spec(tiny_dir, "Klein", "klein"), sd_base="")
    model = load_fast(klein_spec, Fast((), 2, None))  # no warm-up: the first drawing compiles
    marks = getattr(model.pipe.transformer, fast.MARK)
    assert "compiled blocks" in marks and "step cache every 2" in marks
    params = check_params(model, {"prompt": "a cat", "steps": 6, "seed": 1, "width": 64, "height": 64}, {})
    with torch.inference_mode():
        cached = np.asarray(model.run(params, [], no_progress).images[0], dtype=int)
        model.pipe.transformer.disable_cache()
        exact = np.asarray(model.run(params, [], no_progress).images[0], dtype=int)
    assert cached.shape == (64, 64, 3) and cached.std() > 0
    assert 0 < np.abs(cached - exact).mean() < 8  # predicted steps: close to the exact picture, not equal


@pytest.mark.slow
def test_a_second_start_finds_the_compile_cache_and_warms_up_faster(tiny_dir, tmp_path):
    """What a self-hoster sees: the cache's files in the data directory, and the log's warm-up seconds."""
    config = _config(tmp_path, "on", models=f'[models.Text2Image]\ndevice = "cpu"\nsource = "{tiny_dir / "sd15"}"\n')
    first = _warm_up_seconds(config)
    cache = tmp_path / "data" / fast.CACHE
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert (cache / fast.MEGA).is_file() and len(files) > 1, files
    second = _warm_up_seconds(config)
    assert second < first / 2, f"the second warm-up took {second} s, the first {first} s"


def _warm_up_seconds(config) -> float:
    """Start a pool on ``config``, wait for its models, stop it (by pid, whatever happened); the warm-up's seconds
    its log gave."""
    pool = Pool(config, spawn_pool(config), config.parent / "pool.log")
    try:
        asyncio.run(pool.ready(timeout=300))
    finally:
        stop_pool(pool)
    log = pool.log.read_text()
    found = re.findall(r"Text2Image: warm-up at 64x64 took ([\d.]+) s", log)
    assert found, log[-3000:]
    return float(found[0])


def _config(folder, mode: str, models: str = ""):
    from testkit.pool import tiny_models

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    path.write_text(f'[pool]\nsocket = "pool.sock"\nsd_base = "{tiny_models() / "sd15"}"\nfast = "{mode}"\n'
                    f'warmup_sizes = [{WARM}]\n\n[storage]\ndata_dir = "data"\n\n'
                    f'[limits]\nworking_size = {WARM}\nmax_output_size = 128\n\n{models}')
    return path


def _attentions(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in module.modules() if type(m).__name__ == "Attention"]
