"""What the chat benches share (status_edits.py, discord_e2e.py): the real Core with its production
pacing over the tiny-model pool, the Discord bot on the fake, and the order everything is shut down in."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

import pytest

import settings
from bot.adapters.discord_bot import DiscordBot
from bot.app import build_core
from core.engine import Core
from core.pool_client import PoolClient
from testkit.core import close_core, core_config
from testkit.pool import tiny_models


def drawing_config(folder: Path, size: int = 64, steps: int = 50, max_batch: int = 4) -> Path:
    """A pool config with the tiny Text2Image at ``size`` px, at most ``steps`` steps, and the safety checker
    (on by default: the tiny one flags nothing, as a real one would pass these drawings); ``max_batch``: the
    pool's (1: one job at a time)."""
    tiny = tiny_models()
    config = folder / "config.toml"
    config.write_text(f'''[pool]\nmax_batch = {max_batch}\nsocket = "pool.sock"\nsd_base = "{tiny}/sd15"
[storage]\ndata_dir = "data"
[limits]\nworking_size = {size}\nmax_steps = {steps}\n[models.Text2Image]\ndevice = "cpu"\nsource = "{tiny}/sd15"\n
[models.SafetyChecker]\ndevice = "cpu"\nsource = "{tiny}/safety-flags-none"\n''')
    return config


def bench_core(pool, data: Path, llm_url: str, discord_token_env: str,
               pool_client: type[PoolClient] = PoolClient) -> Core:
    """The Core on ``pool`` (a testkit.pool.Pool), its LLM at ``llm_url``, its data in ``data``, Discord
    on with the token in ``discord_token_env``; status messages paced as in production."""
    cfg = core_config(pool.config, data, base_url=llm_url)
    cfg = dataclasses.replace(cfg, discord=settings.DiscordConfig(True, discord_token_env, ()))
    return build_core(cfg, pool_client=pool_client, llm_retries=0)


async def shut_down(bot, fake, llm, core: Core) -> None:
    """The bot first (its work in flight ends), then the fake platform, the fake LLM, the core's clients."""
    await bot.close()
    await fake.stop()
    await llm.stop()
    await close_core(core)


@contextlib.asynccontextmanager
async def discord_bot(core: Core, fake, llm, token_env: str):
    """The Discord bot started against ``fake`` (discord.py pointed at it for the while); on leaving,
    everything shut down (``shut_down``) and discord.py pointed back."""
    with pytest.MonkeyPatch.context() as patched:
        fake.patch(patched)
        os.environ[token_env] = fake.token
        bot = DiscordBot(core, core.config, guild_ready_timeout=0.05)
        try:
            await bot.start()
            yield bot
        finally:
            await shut_down(bot, fake, llm, core)
