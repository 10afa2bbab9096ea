"""python -m bot: start the pool, the session store and every adapter with credentials.

    python -m bot [--config config.toml] [--check-config] [--terminal]

With no platform credentials in the environment, a terminal chat opens.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import settings

log = logging.getLogger("bot")


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
    lines.append(f"Stable Diffusion base: {config.pool.sd_base}")
    if config.models:
        lines.append("Models:")
        width = max(len(n) for n in config.models)
        for m in config.models.values():
            dev = m.resolved_device()
            dev_text = f"{dev} (auto)" if m.device == "auto" else dev
            lines.append(f"  {m.name:<{width}}  device={dev_text:<12} dtype={m.resolved_dtype():<9} "
                         f"source={m.source or '(no weights)'}")
    else:
        lines.append("Models: none (the bot can chat but not see or draw)")
    platforms = []
    for name, cfg in (("discord", config.discord), ("slack", config.slack)):
        platforms.append(f"{name} {'on' if cfg.active else 'off'}")
    terminal = not (config.discord.active or config.slack.active)
    platforms.append(f"terminal {'on' if terminal else 'off'}")
    lines.append("Platforms: " + ", ".join(platforms))
    lines.append(f"Data: {config.storage.data_dir}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot", description="Visual ChatGPT for team chat.")
    parser.add_argument("--config", default="config.toml", help="config file (default: config.toml)")
    parser.add_argument("--check-config", action="store_true", help="print what would load where, then exit")
    parser.add_argument("--terminal", action="store_true", help="chat in this terminal even if platforms are set up")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = settings.load(args.config)
    except settings.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.check_config:
        print(describe(config))
        return 0
    from bot.app import run  # late: the check above must stay fast and light

    try:
        return asyncio.run(run(config, force_terminal=args.terminal))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
