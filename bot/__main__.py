"""python -m bot: start the pool, the session store and every adapter with credentials.

    python -m bot [--config config.toml] [--load "Name_device,..."] [--check-config] [--terminal]
    python -m bot [--config config.toml] --backup FOLDER    (while the bot runs too: core/backup.py)

With no platform credentials in the environment, a terminal chat opens. ``--load`` is the seed's:
"ImageCaptioning_cuda:0,ImageEditing_cuda:1" loads those models, on those devices, for this run
instead of config.toml's [models.*] (the built-in LLM and the safety checker stay; see settings.seed).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import sys
from pathlib import Path

import settings

log = logging.getLogger("bot")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_to_file(config: settings.Config, terminal: bool) -> Path:
    """Every log line goes to DATA_DIR/bot.log; in the terminal chat only there, so the
    conversation stays readable (with Discord or Slack, to stderr as well)."""
    path = config.storage.data_dir / "bot.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    if terminal:
        for h in root.handlers[:]:
            root.removeHandler(h)
    root.addHandler(handler)
    logging.captureWarnings(True)  # library warnings too
    return path


def describe(config: settings.Config) -> str:
    """What would load where, for --check-config."""
    lines = [f"{config.path}: OK"]
    llm = config.llm
    key = "set" if llm.api_key else "not set"
    if not llm.built_in:
        lines.append(f"LLM: {llm.model} at {llm.base_url} (key from ${llm.api_key_env}: {key})")
    elif "LLM" in config.models:
        lines.append(f"LLM: built in, {config.models['LLM'].source} served by the pool (see Models)")
    else:
        lines.append("LLM: none (llm.base_url is empty and there is no [models.LLM]): only commands will work")
    how = "started by the bot" if config.pool.start else "already running (not started by the bot)"
    lines.append(f"Pool: {how}, at {config.pool.url}")
    if config.pool.backend == "ray":
        r = config.pool.ray
        where = f"the Ray cluster at {r.address}" if r.address else "a Ray instance on this machine"
        lines.append(f"Pool backend: ray, {r.replicas} replica(s) with {r.gpus_per_replica:g} GPU(s) each, on {where}"
                     + ("" if importlib.util.find_spec("ray")
                        else " (ray[serve] is not installed: ./scripts/run --ray)"))
    if any(n.endswith("Text2Image") or n in ("Variations", "InstructPix2Pix", "Inpainting") for n in config.models):
        lines.append(f"Stable Diffusion base: {config.pool.sd_base}")
    if config.models:
        lines.append(f"Models (from --load {config.load}):" if config.load else "Models:")
        width = max(len(m.label) for m in config.models.values())
        for m in config.models.values():
            dev = m.resolved_device()
            dev_text = f"{dev} (auto)" if m.device == "auto" else dev
            quantized = f" quantize={m.quantize}" if m.quantize != "none" else ""
            lines.append(f"  {m.label:<{width}}  device={dev_text:<12} dtype={m.resolved_dtype():<9} "
                         f"source={m.source or _no_source(m.name)}{quantized}")
    else:
        lines.append("Models: none (the bot can chat but not see or draw)")
    lines.append(_safety(config))
    platforms = []
    for name, cfg in (("discord", config.discord), ("slack", config.slack)):
        platforms.append(f"{name} {'on' if cfg.active else 'off'}")
    terminal = not (config.discord.active or config.slack.active)
    platforms.append(f"terminal {'on' if terminal else 'off'}")
    lines.append("Platforms: " + ", ".join(platforms))
    lines.append(f"Data: {config.storage.data_dir}")
    return "\n".join(lines)


def _no_source(name: str) -> str:
    return "(the Stable Diffusion base)" if name == "Variations" else "(no weights)"


def _safety(config: settings.Config) -> str:
    s = config.safety
    if not s.enabled:
        return "Safety: off (drawn images are posted unchecked)"
    allowed = [n for n, on in (("age-restricted Discord channels", s.allow_in_nsfw_channels), ("DMs", s.allow_in_dms))
               if on] + [f"Slack {c}" for c in s.allow_in_slack_channels]
    line = "Safety: on; flagged images are withheld everywhere" + (f" except {', '.join(allowed)}" if allowed else "")
    draws = [n for n in config.models if n.endswith("Text2Image") or n in (
        "InstructPix2Pix", "Inpainting", "Variations", "Upscale", "Klein", "KleinInpaint")]
    if draws and settings.SAFETY_CHECKER not in config.models:
        line += ("\n  warning: no [models.SafetyChecker], so every drawn image will be withheld where the filter "
                 "applies; add the section, or set [safety] enabled = false")
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot", description="Visual ChatGPT for team chat.")
    parser.add_argument("--config", default="config.toml", help="config file (default: config.toml)")
    parser.add_argument("--load", default="", metavar='"Name_device,..."',
                        help='the seed\'s way to pick models for this run, instead of config.toml\'s [models.*]: '
                             '"ImageCaptioning_cuda:0,ImageEditing_cuda:1" (the LLM and safety checker stay)')
    parser.add_argument("--check-config", action="store_true", help="print what would load where, then exit")
    parser.add_argument("--terminal", action="store_true", help="chat in this terminal even if platforms are set up")
    parser.add_argument("--backup", metavar="FOLDER", help="copy the session database and image files into FOLDER, "
                        "then exit; safe while the bot runs (README: Backups)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level, format=LOG_FORMAT)
    try:
        config = settings.load(args.config, load=args.load)
    except settings.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.check_config:
        print(describe(config))
        return 0
    if args.backup:
        return _backup(config, Path(args.backup))
    terminal = args.terminal or not (config.discord.active or config.slack.active)
    log_to_file(config, terminal)
    from bot.app import run  # late: the check above must stay fast and light
    from core.db_file import DatabaseUnusable

    try:
        return asyncio.run(run(config, force_terminal=args.terminal))
    except KeyboardInterrupt:
        return 0
    except DatabaseUnusable as e:  # checked before anything starts: the file is left as it is
        log.error("cannot start: %s", e)
        print(f"data error: {e}", file=sys.stderr)
        return 2


def _backup(config: settings.Config, dest: Path) -> int:
    import sqlite3

    from core.backup import BackupFailed, backup

    try:
        print(backup(config.storage.data_dir, dest))
    except (BackupFailed, OSError, sqlite3.Error) as e:
        print(f"backup failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
