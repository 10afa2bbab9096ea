"""Wire the parts together and run until stopped: store, pool, LLM, core, adapters."""

from __future__ import annotations

import logging

import settings
from bot.adapters import terminal
from core.engine import Core
from core.images import ImageStore
from core.llm import LLM
from core.pool_client import PoolClient
from core.pool_process import PoolProcess
from core.store import Store

log = logging.getLogger("bot")


def build_core(config: settings.Config) -> Core:
    data = config.storage.data_dir
    data.mkdir(parents=True, exist_ok=True)
    store = Store(data / "bot.db")
    lim = config.limits
    images = ImageStore(data / "images", store, max_pixels=lim.max_image_pixels, max_bytes=lim.max_upload_bytes,
                        working_size=lim.working_size)
    return Core(config, store, images, PoolClient(config.pool.url), LLM(config.llm))


async def run(config: settings.Config, force_terminal: bool = False) -> int:
    core = build_core(config)
    pool = None
    if config.pool.start:
        pool = PoolProcess(config.path, config.pool.url, config.pool.startup_timeout_s)
        try:
            await pool.start()
        except RuntimeError as e:
            log.error("cannot start the image engine: %s", e)
            return 1
    else:
        log.info("using the pool at %s", config.pool.url)
    try:
        for name, cfg in (("Discord", config.discord), ("Slack", config.slack)):
            if cfg.active:
                log.warning("%s credentials are set, but the %s adapter is not part of this version yet; "
                            "starting the terminal chat instead", name, name)
        return await terminal.run(core)
    finally:
        if pool:
            await pool.stop()
        await core.pool.close()
        if core.llm:
            await core.llm.close()
