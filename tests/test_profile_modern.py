"""The modern profile, config.modern.toml: one line switches to it, --check-config and --fetch take it,
it builds on config.toml (``extends``) with its own models, all of them permissively licensed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import settings
from gpu_pool.fetch import wants_of
from tests.conftest import ROOT

MODERN = ROOT / "config.modern.toml"
NAMES = ["Klein", "KleinInpaint", "Florence2", "Sam2", "DepthAnything", "SafetyChecker", "LLM"]


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **env))


def test_the_modern_profile_names_its_models_and_keeps_config_toml_for_the_rest(monkeypatch):
    for var in ("DISCORD_TOKEN", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    seed, cfg = settings.load(ROOT / "config.toml"), settings.load(MODERN)
    assert list(cfg.models) == NAMES  # the seed's models are not loaded with it
    assert {n: cfg.models[n].source for n in NAMES[:5]} == settings.models.MODERN_DEFAULTS
    assert cfg.models["LLM"].source == "Qwen/Qwen3-4B"  # the same weights as klein's text encoder
    assert cfg.models["SafetyChecker"].source == "CompVis/stable-diffusion-safety-checker"
    assert (cfg.limits.working_size, cfg.limits.max_output_size) == (1024, 2048)  # klein's megapixel, Upscale ×2
    assert cfg.limits.max_upload_bytes == seed.limits.max_upload_bytes  # the rest comes from config.toml
    assert (cfg.llm, cfg.discord, cfg.slack, cfg.safety, cfg.storage) == (
        seed.llm, seed.discord, seed.slack, seed.safety, seed.storage)
    text = MODERN.read_text()
    for licence in ("Apache-2.0", "MIT"):
        assert licence in text
    for never in ("klein-9B", "FLUX.1-dev", "Depth-Anything-V2-Base", "Depth-Anything-V2-Large"):
        assert never not in "".join(m.source for m in cfg.models.values())


def test_check_config_takes_the_modern_profile():
    out = run("bot", "--config", str(MODERN), "--check-config")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{MODERN}: OK")
    assert "LLM: built in, Qwen/Qwen3-4B served by the pool" in out.stdout
    for name, source in (("Klein", "black-forest-labs/FLUX.2-klein-4B"), ("Florence2", "Florence-2-base"),
                         ("Sam2", "facebook/sam2.1-hiera-base-plus"),
                         ("DepthAnything", "depth-anything/Depth-Anything-V2-Small-hf")):
        assert any(line.strip().startswith(name) and source in line for line in out.stdout.splitlines()), name
    assert "Stable Diffusion base" not in out.stdout  # no model of this profile reads it
    assert "Safety: on" in out.stdout and "warning" not in out.stdout


def test_fetch_plans_each_repo_once_and_stays_off_the_hub_offline(tmp_path):
    repos = [want.source for want, _ in wants_of(settings.load(MODERN, env_check=False))]
    assert len(repos) == len(set(repos))  # Klein and KleinInpaint: one repo, fetched once
    assert set(repos) == {"black-forest-labs/FLUX.2-klein-4B", "florence-community/Florence-2-base",
                          "facebook/sam2.1-hiera-base-plus", "depth-anything/Depth-Anything-V2-Small-hf",
                          "CompVis/stable-diffusion-safety-checker", "Qwen/Qwen3-4B"}
    out = run("gpu_pool.fetch", "--config", str(MODERN), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    assert out.returncode == 1
    assert "HF_HUB_OFFLINE=1 keeps this command off the hub" in out.stderr
    for repo in repos:
        assert repo in out.stderr


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_a_profile_overrides_key_by_key_and_brings_its_own_models(tmp_path):
    write(tmp_path, "base.toml", '[limits]\nworking_size = 256\nmax_steps = 20\n[pool.ray]\nreplicas = 3\n'
                                 '[models.Text2Image]\ndevice = "cpu"\n')
    cfg = settings.load(write(tmp_path, "p.toml", 'extends = "base.toml"\n[limits]\nmax_steps = 8\n'
                                                  '[pool.ray]\ncpus_per_replica = 2\n[models.Klein]\ndevice = "cpu"\n'))
    assert (cfg.limits.working_size, cfg.limits.max_steps) == (256, 8)
    assert (cfg.pool.ray.replicas, cfg.pool.ray.cpus_per_replica) == (3, 2)
    assert list(cfg.models) == ["Klein"]
    assert settings.load(write(tmp_path, "none.toml", 'extends = "base.toml"\n')).models == {}


@pytest.mark.parametrize("text, words", [
    ('extends = "missing.toml"\n', "missing.toml: file not found"),
    ('extends = 3\n', 'extends: must be the file this profile builds on, like "config.toml"'),
    ('extends = "loop.toml"\n', "extends: loop.toml extends this file again"),
])
def test_a_broken_extends_is_named(tmp_path, text, words):
    with pytest.raises(settings.ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        settings.load(write(tmp_path, "loop.toml", text))
