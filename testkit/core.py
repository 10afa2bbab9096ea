"""The real Core as the bot wires it (``bot.app.build_core``), on a test pool and a scripted LLM."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import settings
from bot.app import build_core
from core.engine import Core


def core_config(config: Path, data: Path, **llm_overrides) -> settings.Config:
    """The bot config at ``config`` with its data in ``data`` and ``llm_overrides`` in ``[llm]``."""
    cfg = settings.load(config, env_check=False)
    return dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, **llm_overrides),
                               storage=settings.StorageConfig(data))


def make_core(pool, tmp_path: Path, llm_server, **llm_overrides) -> Core:
    """The real Core on ``pool`` (a testkit.pool.Pool), its LLM ``llm_server`` (anything with a ``base_url``;
    "" for the pool's built-in model), its data in ``tmp_path``/data; no retries, no status delay."""
    cfg = core_config(pool.config, tmp_path / "data", base_url=llm_server.base_url, **llm_overrides)
    return build_core(cfg, llm_retries=0, status_interval=0)


async def close_core(core: Core) -> None:
    """Close what a core from ``build_core`` holds open: its pool and LLM clients."""
    await core.pool.close()
    if core.llm is not None:
        await core.llm.close()
