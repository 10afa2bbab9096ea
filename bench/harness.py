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
from core.engine import Core
from core.images import ImageStore
from core.llm import LLM
from core.pool_client import PoolClient
from core.store import Store


def build_core(pool, data: Path, llm_url: str, discord_token_env: str,
               pool_client: type[PoolClient] = PoolClient) -> Core:
    """The Core on ``pool`` (a tests.conftest Pool), its LLM at ``llm_url``, its data in ``data``, Discord
    on with the token in ``discord_token_env``; status messages paced as in production."""
    cfg = settings.load(pool.config, env_check=False)
    cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, base_url=llm_url),
                              storage=settings.StorageConfig(data),
                              discord=settings.DiscordConfig(True, discord_token_env, ()))
    store = Store(data / "bot.db")
    lim = cfg.limits
    images = ImageStore(data / "images", store, max_pixels=lim.max_image_pixels, max_bytes=lim.max_upload_bytes,
                        working_size=lim.working_size)
    return Core(cfg, store, images, pool_client(cfg.pool.url), LLM(cfg.llm, max_retries=0))


async def shut_down(bot, fake, llm, core: Core) -> None:
    """The bot first (its work in flight ends), then the fake platform, the fake LLM, the core's clients."""
    await bot.close()
    await fake.stop()
    await llm.stop()
    await core.pool.close()
    await core.llm.close()


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
