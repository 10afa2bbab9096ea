"""The seed's own words for its models: ``[models.ImageEditing]`` (Text2Mask + Inpainting) and
``--load "ImageCaptioning_cuda:0,ImageEditing_cuda:1"``, as the paper's README starts visual_chatgpt.py.

Checked where a user meets them: ``python -m bot --check-config`` (a real process), the pool a real
``PoolProcess`` starts with the bot's --load, and /models over it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

import settings
from bot.app import build_core
from core.pool_process import PoolProcess
from tests.conftest import ROOT
from tests.test_agent import turn
from testkit.pool import write_tiny_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def check_config(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot", "--config", str(path), "--check-config", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


# --- [models.ImageEditing] ----------------------------------------------------------


def test_image_editing_is_text2mask_and_inpainting(tmp_path):
    cfg = settings.load(write(tmp_path, '[models.ImageEditing]\ndevice = "cuda:1"\ndtype = "float16"\n'),
                        env_check=False)
    assert [(m.label, m.device, m.dtype, m.source) for m in cfg.models.values()] == [
        ("Text2Mask (ImageEditing)", "cuda:1", "float16", "CIDAS/clipseg-rd64-refined"),
        ("Inpainting (ImageEditing)", "cuda:1", "float16", "stable-diffusion-v1-5/stable-diffusion-inpainting")]


def test_a_models_own_section_wins_over_image_editing(tmp_path):
    cfg = settings.load(write(tmp_path, '[models.ImageEditing]\ndevice = "cpu"\n'
                                        '[models.Inpainting]\ndevice = "cuda:1"\nsource = "./inpaint"\n'),
                        env_check=False)
    assert [(m.label, m.device, m.source) for m in cfg.models.values()] == [
        ("Text2Mask (ImageEditing)", "cpu", "CIDAS/clipseg-rd64-refined"),
        ("Inpainting (ImageEditing)", "cuda:1", str(tmp_path / "inpaint"))]


def test_image_editing_has_no_source_of_its_own(tmp_path):
    with pytest.raises(settings.ConfigError) as e:
        settings.load(write(tmp_path, '[models.ImageEditing]\nsource = "x/y"\n'), env_check=False)
    assert str(e.value) == ("models.ImageEditing.source: ImageEditing stands for Text2Mask and Inpainting, which read "
                            "two sources; set source in [models.Text2Mask] or [models.Inpainting] instead")


def test_check_config_shows_image_editing_as_its_two_models(tmp_path):
    out = check_config(write(tmp_path, '[models.ImageEditing]\ndevice = "cpu"\n'))
    assert out.returncode == 0, out.stderr
    assert re.search(r"^  Text2Mask \(ImageEditing\) +device=cpu +dtype=float32 +source=CIDAS/clipseg-rd64-refined$",
                     out.stdout, re.M), out.stdout
    assert re.search(r"^  Inpainting \(ImageEditing\) +device=cpu +dtype=float32 +"
                     r"source=stable-diffusion-v1-5/stable-diffusion-inpainting$", out.stdout, re.M), out.stdout


# --- --load "Name_device,..." ----------------------------------------------------------


SEED_LOAD = "ImageCaptioning_cuda:0,ImageEditing_cuda:1,VisualQuestionAnswering_cuda:2"


def test_check_config_with_the_seeds_load_shows_its_models_on_its_devices():
    """The paper's README's command, on the shipped config.toml: those models, there; the LLM and safety
    checker as config.toml has them; config.toml's other models (Text2Image, Upscale ...) not this run."""
    out = check_config(ROOT / "config.toml", "--load", SEED_LOAD)
    assert out.returncode == 0, out.stderr
    models = out.stdout.split("Models (from --load " + SEED_LOAD + "):\n")[1].split("\nSafety:")[0].splitlines()
    assert [re.sub(r"\s+", " ", line).strip().split(" source=")[0] for line in models] == [
        "ImageCaptioning device=cuda:0 dtype=float16",
        "Text2Mask (ImageEditing) device=cuda:1 dtype=float16",
        "Inpainting (ImageEditing) device=cuda:1 dtype=float16",
        "VisualQuestionAnswering device=cuda:2 dtype=float16",
        "SafetyChecker device=cpu (auto) dtype=float32",
        "LLM device=cpu (auto) dtype=float32"]


@pytest.mark.parametrize("load, error", [
    ("ImageCaptioning_cuda:0,Foo_cuda:0", "--load: 'Foo_cuda:0': there is no model called Foo; known models: "
                                          "ImageCaptioning, "),
    ("ImageCaptioning_gpu", "--load: 'ImageCaptioning_gpu': 'gpu' is not a device; accepted values: \"auto\", "),
    ("ImageCaptioning", "--load: 'ImageCaptioning' is not Name_device; each entry is a model and its device, like "),
    ("ImageEditing_cpu,ImageEditing_cuda:0", "--load: 'ImageEditing_cuda:0': ImageEditing is named twice"),
    (",", "--load: no models named; "),
])
def test_a_bad_load_entry_exits_naming_it(load, error):
    out = check_config(ROOT / "config.toml", "--load", load)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: " + error), out.stderr


async def test_the_pool_the_bot_starts_loads_what_load_names_and_models_says_so(tiny_dir, tmp_path):
    """The bot's --load reaches the pool it starts (PoolProcess -> python -m gpu_pool --load): only those
    models load, from config.toml's sources (the tiny ones), and /models labels ImageEditing's two."""
    path = write_tiny_config(tmp_path)
    load = "ImageCaptioning_cpu,ImageEditing_cpu"
    cfg = settings.load(path, env_check=False, load=load)
    supervisor = PoolProcess(path, cfg.pool.url, startup_timeout=120, load=cfg.load)
    await supervisor.start()
    cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, base_url="http://127.0.0.1:9/v1"))
    core = build_core(cfg, llm_retries=0, status_interval=0)
    try:
        for _ in range(1200):
            infos = await core.pool.models()
            if {m.state for m in infos} == {"ready"}:
                break
            await asyncio.sleep(0.1)
        assert sorted(m.name for m in infos) == sorted(["ImageCaptioning", "Text2Mask", "Inpainting",
                                                        "SafetyChecker", "LLM"])
        listing = await core.command(dataclasses.replace(turn("/models"), is_admin=True), "models")
        lines = listing.splitlines()
        assert any(line.startswith("Text2Mask (ImageEditing): ready on cpu (float32)") for line in lines), listing
        assert any(line.startswith("Inpainting (ImageEditing): ready on cpu (float32)") for line in lines), listing
        assert any(line.startswith("ImageCaptioning: ready on cpu") for line in lines), listing
        assert "Text2Image" not in listing
    finally:
        await supervisor.stop()
        await core.pool.close()
        if core.llm is not None:
            await core.llm.close()
