"""config.toml validation: every mistake names its key and what is accepted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import settings
from tests.conftest import ROOT


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str, monkeypatch=None) -> str:
    with pytest.raises(settings.ConfigError) as exc:
        settings.load(write(tmp_path, text))
    return str(exc.value)


def test_shipped_config_is_valid_and_mirrors_the_seed_advice(monkeypatch):
    for var in ("DISCORD_TOKEN", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    cfg = settings.load(ROOT / "config.toml")
    # the seed's advice, checked, the built-in LLM, and the models of the buttons under every image
    assert list(cfg.models) == ["ImageCaptioning", "Text2Image", "SafetyChecker", "Variations", "Upscale", "LLM"]
    assert (cfg.models["Variations"].source, cfg.models["Upscale"].source) == ("", "stabilityai/sd-x2-latent-upscaler")
    assert cfg.models["SafetyChecker"].source == "CompVis/stable-diffusion-safety-checker"
    assert cfg.safety == settings.SafetyConfig(enabled=True, allow_in_nsfw_channels=False, allow_in_slack_channels=(),
                                               allow_in_dms=False)
    assert all(m.device == "auto" for m in cfg.models.values())
    assert cfg.models["Text2Image"].source == settings.SD15
    assert cfg.llm.built_in and cfg.models["LLM"].source == "Qwen/Qwen3-VL-2B-Instruct"  # no server to set up
    assert cfg.pool.start is True and cfg.pool.socket == ROOT / "data" / "pool.sock"
    assert cfg.limits.working_size == 512
    assert not cfg.discord.active and not cfg.slack.active


def test_shutdown_grace_and_slack_api_url(tmp_path):
    cfg = settings.load(write(tmp_path, '[bot]\nshutdown_grace_s = 2.5\n[slack]\napi_url = "https://slack-gov.com/api/"\n'))
    assert cfg.bot.shutdown_grace_s == 2.5 and cfg.slack.api_url == "https://slack-gov.com/api/"
    assert settings.load(write(tmp_path, "")).bot.shutdown_grace_s == 5
    assert error_of(tmp_path, "[bot]\nshutdown_grace_s = -1\n") == (
        "bot.shutdown_grace_s: -1 is not valid; must be between 0 and 300")
    error = error_of(tmp_path, '[slack]\napi_url = "slack.com/api"\n')
    assert error.startswith("slack.api_url: 'slack.com/api' is not valid")


def test_unknown_model_name(tmp_path):
    msg = error_of(tmp_path, "[models.Text2Imag]\ndevice = 'cpu'\n")
    assert msg.startswith("models.Text2Imag: unknown model; known models: ImageCaptioning, VisualQuestionAnswering,")
    assert "NormalText2Image" in msg


def test_malformed_device(tmp_path):
    msg = error_of(tmp_path, "[models.Text2Image]\ndevice = 'cuda:x'\n")
    assert msg == ("models.Text2Image.device: 'cuda:x' is not valid; accepted values: \"auto\", \"cpu\", \"cuda\", "
                   "\"cuda:N\" with N a GPU number (cuda:0, cuda:1 ...), \"mps\"")


def test_unknown_key(tmp_path):
    msg = error_of(tmp_path, "[llm]\nmodle = 'x'\n")
    assert msg == ("llm.modle: unknown key; known keys in [llm]: base_url, model, api_key_env, timeout_s, "
                   "turn_timeout_s, max_tool_rounds, history_tokens, stream, max_tokens, tools, constrain, vision, "
                   "vision_images")


def test_unknown_section(tmp_path):
    assert error_of(tmp_path, "[discrod]\n").startswith("discrod: unknown section; known sections: llm, pool,")


def test_wrong_type(tmp_path):
    assert error_of(tmp_path, "[limits]\nmax_steps = '50'\n") == "limits.max_steps: must be an integer, got '50'"
    assert error_of(tmp_path, "[pool]\nstart = 1\n") == "pool.start: must be true or false, got 1"
    assert error_of(tmp_path, "[discord]\nenabled = 'yes'\n") == (
        "discord.enabled: 'yes' is not valid; accepted values: true, false, \"auto\"")


def test_wrong_dtype_and_range(tmp_path):
    assert error_of(tmp_path, "[models.Text2Image]\ndtype = 'fp16'\n") == (
        "models.Text2Image.dtype: 'fp16' is not valid; accepted values: 'auto', 'float16', 'bfloat16', 'float32'")
    assert error_of(tmp_path, "[limits]\nworking_size = 500\n") == (
        "limits.working_size: 500 is not valid; must be a multiple of 8 between 64 and 2048")


def test_the_ray_backend_and_its_table(tmp_path):
    path = write(tmp_path, '[pool]\nbackend = "ray"\n[pool.ray]\nreplicas = 4\nobject_store_memory = "2GiB"\n')
    pool = settings.load(path).pool
    assert (pool.backend, pool.ray.replicas, pool.ray.object_store_memory) == ("ray", 4, 2 * 2**30)
    assert settings.load(write(tmp_path, "")).pool.backend == "local"
    assert error_of(tmp_path, "[pool]\nbackend = 'rey'\n") == (
        "pool.backend: 'rey' is not valid; accepted values: 'local', 'ray'")
    assert error_of(tmp_path, "[pool.ray]\nreplica = 2\n").startswith("pool.ray.replica: unknown key; known keys in "
                                                                      "[pool.ray]: address, replicas,")
    assert error_of(tmp_path, "[pool.ray]\nspread_after = -1\n") == (
        "pool.ray.spread_after: -1 is not valid; must be 0 or more")
    assert error_of(tmp_path, '[pool]\nbackend = "ray"\n[models.Text2Image]\ndevice = "cuda:1"\n') == (
        "models.Text2Image.device: 'cuda:1' is not valid with pool.backend = \"ray\": each replica has one GPU of "
        'its own; use "auto" or "cuda"')


def test_platform_enabled_without_token(tmp_path, monkeypatch):
    monkeypatch.delenv("MY_DISCORD_TOKEN", raising=False)
    msg = error_of(tmp_path, "[discord]\nenabled = true\ntoken_env = 'MY_DISCORD_TOKEN'\n")
    assert msg == ("discord.token_env: Discord is enabled but the environment variable MY_DISCORD_TOKEN is not set; "
                   "set it to the bot token, or set discord.enabled = \"auto\"")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1")
    monkeypatch.delenv("SLACK_APP_TOKEN", raising=False)
    msg = error_of(tmp_path, "[slack]\nenabled = true\n")
    assert msg == ("slack.app_token_env: Slack is enabled but the environment variable SLACK_APP_TOKEN is not set; "
                   "set it, or set slack.enabled = \"auto\"")


def test_token_value_instead_of_variable_name(tmp_path):
    msg = error_of(tmp_path, "[discord]\ntoken_env = 'MTE.abc-def'\n")
    assert msg.endswith("must be the name of an environment variable, like DISCORD_TOKEN (not the token itself)")


def test_auto_platforms_follow_the_environment(tmp_path, monkeypatch):
    path = write(tmp_path, "")
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    assert not settings.load(path).discord.active
    monkeypatch.setenv("DISCORD_TOKEN", "abc")
    assert settings.load(path).discord.active


def test_local_sources_resolve_against_the_config_file(tmp_path):
    cfg = settings.load(write(tmp_path, "[models.Text2Image]\nsource = './models/sd'\n[pool]\nsd_base = '../sd'\n"))
    assert cfg.models["Text2Image"].source == str(tmp_path / "models" / "sd")
    assert cfg.pool.sd_base == str(tmp_path.parent / "sd")
    assert cfg.models["Text2Image"].resolved_dtype() in ("float16", "float32")


def test_not_toml(tmp_path):
    assert "not valid TOML" in error_of(tmp_path, "[llm\n")


# --- the command a user runs ------------------------------------------------


def check_config(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot", "--config", str(path), "--check-config"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_check_config_lists_models_and_devices():
    out = check_config(ROOT / "config.toml")
    assert out.returncode == 0, out.stderr
    assert re.search(r"ImageCaptioning +device=cpu \(auto\) +dtype=float32", out.stdout)
    assert re.search(r"Text2Image +device=cpu \(auto\) +dtype=float32 +source=stable-diffusion-v1-5/", out.stdout)
    assert re.search(r"Variations +device=cpu \(auto\) +dtype=float32 +source=\(the Stable Diffusion base\)$",
                     out.stdout, re.M)
    assert re.search(r"Upscale +device=cpu \(auto\) +dtype=float32 +source=stabilityai/sd-x2-latent-upscaler$",
                     out.stdout, re.M)
    assert re.search(r"LLM +device=cpu \(auto\) +dtype=float32 +source=Qwen/Qwen3-VL-2B-Instruct", out.stdout)
    assert "LLM: built in, Qwen/Qwen3-VL-2B-Instruct served by the pool" in out.stdout


def test_check_config_names_the_detector_and_sams_default_weights(tmp_path):
    out = check_config(write(tmp_path, "[models.Text2Box]\ndevice = 'cpu'\n[models.Segmenting]\ndevice = 'cpu'\n"))
    assert out.returncode == 0, out.stderr
    assert re.search(r"Text2Box +device=cpu +dtype=float32 +source=IDEA-Research/grounding-dino-tiny$",
                     out.stdout, re.M)
    assert re.search(r"Segmenting +device=cpu +dtype=float32 +source=facebook/sam-vit-huge$", out.stdout, re.M)


@pytest.mark.parametrize("text, key", [
    ("[models.Text2Imag]\n", "models.Text2Imag"),
    ("[models.Text2Image]\ndevice = 'cuda:x'\n", "models.Text2Image.device"),
    ("[llm]\nmodle = 'x'\n", "llm.modle"),
    ("[limits]\nmax_steps = 'many'\n", "limits.max_steps"),
])
def test_check_config_on_broken_files_is_one_line_naming_the_key(tmp_path, text, key):
    out = check_config(write(tmp_path, text))
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"config error: {key}: ")


# --- registries stay honest -------------------------------------------------


def test_every_config_key_is_documented_in_config_toml():
    text = (ROOT / "config.toml").read_text()
    for section, keys in settings.SCHEMA.items():
        assert f"[{section}]" in text
        for key in keys:
            assert re.search(rf"^#?\s*{key} = ", text, re.M), f"{section}.{key} missing from config.toml"
    for key in settings.MODEL_KEYS:
        assert f"#   {key}:" in text
    for name in settings.MODEL_NAMES:
        assert name in text


def test_model_table_covers_exactly_the_seed_models():
    from gpu_pool.models import MODEL_TABLE

    assert list(MODEL_TABLE) == list(settings.MODEL_NAMES)
