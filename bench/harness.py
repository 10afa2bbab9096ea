"""What the chat benches share (status_edits.py, discord_e2e.py): the real Core with its production
pacing over the tiny-model pool, and the order everything is shut down in."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import settings
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
