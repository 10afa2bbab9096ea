"""The registry as a first real run meets it: one base for Text2Image and sd_base, reloads that never
hold two copies, weights against free memory at start-up, progress in /models, tiny uploads edited."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import weakref
from pathlib import Path

import pytest
from PIL import Image

import settings
from core.admin import format_models
from core.tools.base import waiting_text
from gpu_pool import fit
from gpu_pool import weights as w
from gpu_pool.protocol import Event, ModelInfo
from gpu_pool.registry import Registry
from settings.units import hub_size
from tests.test_agent import RecordingReply, turn
from core.turn import Attachment


def small_config(tiny_dir: Path, tmp_path: Path) -> settings.Config:
    """Text2Image with no source of its own, a ControlNet and BLIP, all on a local sd_base."""
    path = tmp_path / "config.toml"
    path.write_text(f'''
[pool]
sd_base = "{tiny_dir}/sd15"
[storage]
data_dir = "data"
[models.Text2Image]
device = "cpu"
[models.CannyText2Image]
device = "cpu"
source = "{tiny_dir}/controlnet-canny"
[models.ImageCaptioning]
device = "cpu"
source = "{tiny_dir}/blip-caption"
''')
    return settings.load(path, env_check=False)


def test_text2image_follows_sd_base(tiny_dir, tmp_path):
    config = small_config(tiny_dir, tmp_path)
    assert config.models["Text2Image"].source == config.pool.sd_base == f"{tiny_dir}/sd15"
    assert config.default_source("Text2Image") == config.pool.sd_base  # /load Text2Image when not configured
    assert config.default_source("InstructPix2Pix") == settings.MODEL_DEFAULTS["InstructPix2Pix"]


async def test_one_base_and_reloads_that_release_the_old_copy_first(tiny_dir, tmp_path, caplog):
    registry = Registry(small_config(tiny_dir, tmp_path))
    with caplog.at_level(logging.INFO, logger="gpu_pool"):
        await asyncio.gather(*registry.start_all())
    try:
        infos = {m.name: m for m in registry.infos()}
        assert {m.state for m in infos.values()} == {"ready"}
        t2i = infos["Text2Image"]
        assert t2i.shared_bytes == t2i.bytes > 0 and "CannyText2Image" in t2i.shares_with  # one base, offline

        # Start-up: the weights each device holds, the shared base once, against its free memory.
        [line] = [r.getMessage() for r in caplog.records if "of weights" in r.getMessage()]
        size = lambda *files: sum((tiny_dir / f).stat().st_size for f in files)  # noqa: E731 (float32 files)
        base = size("sd15/unet/diffusion_pytorch_model.safetensors", "sd15/vae/diffusion_pytorch_model.safetensors",
                    "sd15/text_encoder/model.safetensors")
        canny = size("controlnet-canny/diffusion_pytorch_model.safetensors")
        blip = size("blip-caption/model.safetensors")
        text = hub_size
        assert line.startswith(f"cpu: the configured models need about {text(base + canny + blip)} of weights "
                               f"(Text2Image {text(base)}, CannyText2Image {text(base + canny)}, "
                               f"ImageCaptioning {text(blip)}); ")
        assert line.endswith(" is free")

        # One model: its old ControlNet is gone before the new one loads; the base is not reloaded.
        old_canny = weakref.ref(registry.entries["CannyText2Image"].model.pipe.controlnet)
        base_unet = weakref.ref(registry.entries["Text2Image"].model.pipe.unet)
        assert await reload_watching(registry, "CannyText2Image", [old_canny]) == [("CannyText2Image", 0)]
        assert registry.entries["CannyText2Image"].model.pipe.unet is base_unet()

        # Everything: every old copy, the base included, is gone before the first new load begins.
        old = [weakref.ref(m) for e in registry.entries.values() for m in e.model.modules().values()]
        seen = await reload_watching(registry, None, old)
        assert sorted(seen) == [("CannyText2Image", 0), ("ImageCaptioning", 0), ("Text2Image", 0)]
        assert {e.state for e in registry.entries.values()} == {"ready"}
        assert base_unet() is None
    finally:
        registry.close()


async def reload_watching(registry: Registry, name: str | None, old: list[weakref.ref],
                          reload=None) -> list[tuple[str, int]]:
    """Reload (``reload``: a coroutine function that does, e.g. a Ray replica's), noting for each model,
    as its new load begins, how many of the ``old`` modules are alive."""
    seen: dict[str, int] = {}

    async def watch():
        while True:
            for e in registry.entries.values():
                if e.state == "loading" and e.load_started is not None and e.name not in seen:
                    gc.collect()
                    seen[e.name] = sum(r() is not None for r in old)
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    try:
        if reload is not None:
            await reload()
        else:
            assert await registry.reload(name) == ([name] if name else list(registry.config.models))
    finally:
        watcher.cancel()
    return sorted(seen.items())


async def test_the_start_up_estimate_counts_the_llm_s_kv_cache(tiny_dir, tmp_path, caplog):
    """The LLM's weights and its KV cache for the longest chat the core sends (the defaults: 6,000 tokens of
    history and 1,024 of answer), the figure the budget counts while it answers."""
    (tmp_path / "config.toml").write_text(f'[storage]\ndata_dir = "data"\n[models.LLM]\ndevice = "cpu"\n'
                                          f'source = "{tiny_dir}/llm"\n')
    registry = Registry(settings.load(tmp_path / "config.toml", env_check=False))
    with caplog.at_level(logging.INFO, logger="gpu_pool"):
        await asyncio.gather(*registry.start_all())
    try:
        llm = registry.entries["LLM"].model
        cache = llm.working_bytes()
        assert cache == fit.cache_bytes(llm.model.config.to_dict(), 6000 + 1024, llm.dtype) > 0
        weights = (await registry.fetcher.listed(w.plan("LLM", f"{tiny_dir}/llm", "")[0], "float32")).loaded_bytes()
        [line] = [r.getMessage() for r in caplog.records if "of weights" in r.getMessage()]
        assert line.startswith(f"cpu: the configured models need about {hub_size(weights + cache)} of weights and "
                               f"KV cache (LLM {hub_size(weights)} + {hub_size(cache)} KV cache); ")
    finally:
        registry.close()


def test_the_fit_warning_says_what_to_set():
    level, text = fit.report("cuda:0", {"Text2Image": 2_100_000_000, "InstructPix2Pix": 1_700_000_000},
                             3_800_000_000, free=3_000_000_000)
    assert level == logging.WARNING
    assert text == ('cuda:0: the configured models need about 3.8 GB of weights (Text2Image 2.1 GB, '
                    'InstructPix2Pix 1.7 GB) but only 3.0 GB is free, and jobs need working memory on top: they '
                    'will not all fit. Set [residency] budget = "1GiB" in config.toml so they take turns on the '
                    'device, or move some models to another device.')
    level, text = fit.report("cuda:0", {"Text2Image": 2_100_000_000}, 2_100_000_000, free=80_000_000_000)
    assert level == logging.INFO and text.endswith("; 80.0 GB is free")
    level, text = fit.report("cuda:0", {"Text2Image": 9e9}, 9e9, free=7e9, budget=8 * 2**30)
    assert level == logging.WARNING and "lower [residency] budget" in text


def test_the_chat_and_models_say_how_far_a_download_got():
    ev = Event("progress", "j1", step=0, total=0, phase="downloading", downloaded=1_234_000_000,
               download_total=2_130_000_000, eta_s=118.0)
    assert waiting_text("Text2Image", ev) == ("Text2Image is still downloading (1.2 of 2.1 GB, about 2 min left); "
                                              "I'll answer when it is ready")
    ev = Event("progress", "j1", step=0, total=0, phase="loading", downloaded=2_130_000_000,
               download_total=2_130_000_000, eta_s=12.4)
    assert waiting_text("Text2Image", ev) == ("Text2Image is still loading (about 12 s left); "
                                              "I'll answer when it is ready")
    assert format_models([
        ModelInfo("Text2Image", "cuda:0", "float16", "sd", "loading", phase="downloading", downloaded=400_000_000,
                  download_total=2_130_000_000, eta_s=95),
        ModelInfo("ImageCaptioning", "cuda:0", "float16", "blip", "loading", phase="loading",
                  downloaded=990_000_000, download_total=990_000_000, eta_s=3)]).splitlines() == [
        "Text2Image: downloading on cuda:0 (float16), 0.4 of 2.1 GB, about 2 min left",
        "ImageCaptioning: loading on cuda:0 (float16), 990 MB of files, about 3 s left"]


def _png(size: tuple[int, int]) -> Attachment:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 140, 200)).save(buf, "PNG")
    return Attachment("dot.png", "image/png", buf.getvalue())


@pytest.mark.parametrize("size", [(1, 1), (7, 3)])
async def test_make_it_winter_on_a_tiny_upload_gives_an_image(core, llm_server, size):
    """The pool fits the image to the working size (64 px in the tiny config), its shape kept: the user gets a
    usable picture."""
    reply = RecordingReply()
    await core.handle(turn("", "discord:channel:tiny", _png(size)), reply)
    llm_server.on(user="make it winter", after_tool=False).call(
        "edit_image", {"image": "img1", "instruction": "make it winter"})
    llm_server.on(after_tool="edit_image").reply("Here: img2")
    reply = RecordingReply()
    out = await core.handle(turn("make it winter", "discord:channel:tiny"), reply)
    assert out.images == ["img2"] and reply.image_ids == ["img2"]
    row = core.store.image("discord:channel:tiny", "img2")
    width, height = size
    assert row.width == 64 and abs(row.height - 64 * height / width) <= 8  # its shape kept, within 8 px rounding
