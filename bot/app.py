"""Wire the parts together and run until stopped: store, pool, LLM, core, adapters."""

from __future__ import annotations

import asyncio
import logging
import sys

import settings
from bot.adapters import terminal
from core import local_llm
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
    return Core(config, store, images, PoolClient(config.pool.url), build_llm(config))


def build_llm(config: settings.Config) -> LLM | None:
    """The configured server; with [llm] base_url empty, the pool's built-in model over the pool's socket."""
    if not config.llm.built_in:
        return LLM(config.llm)
    if "LLM" not in config.models:
        log.warning("llm.base_url is empty and config.toml has no [models.LLM]: free text is off, commands work")
        return None
    return LLM(config.llm, **local_llm.connection(config.pool.url))


async def run(config: settings.Config, force_terminal: bool = False) -> int:
    core = build_core(config)
    pool = None
    in_terminal = force_terminal or not (config.discord.active or config.slack.active)
    data = config.storage.data_dir
    if config.pool.start:
        if in_terminal:
            print(f"Starting the image engine (logs: {data / 'bot.log'}, {data / 'pool.log'})", flush=True)
        # in the terminal chat the pool's output goes to a file: its log lines must not scroll through the chat
        pool = PoolProcess(config.path, config.pool.url, config.pool.startup_timeout_s,
                           log_file=data / "pool.log" if in_terminal else None)
        try:
            await pool.start()
        except RuntimeError as e:
            log.error("cannot start the image engine: %s", e)
            if in_terminal:
                print(f"The image engine did not start: {e}. See {data / 'pool.log'}.", file=sys.stderr)
            return 1
    else:
        log.info("using the pool at %s", config.pool.url)
    try:
        platforms = []
        if config.discord.active and not force_terminal:
            from bot.adapters import discord_bot
            platforms.append(("Discord", discord_bot.run))
        if config.slack.active and not force_terminal:
            from bot.adapters import slack_bot
            platforms.append(("Slack", slack_bot.run))
        if not platforms:
            return await terminal.run(core)
        return await serve_platforms(core, config, platforms)
    finally:
        if pool:
            await pool.stop()
        await core.pool.close()
        if core.llm:
            await core.llm.close()


async def serve_platforms(core: Core, config: settings.Config, platforms) -> int:
    """Run every platform side by side; the bot stops (with an error code) only when all have failed."""
    tasks = {asyncio.create_task(run(core, config), name=name): name for name, run in platforms}
    log.info("serving %s", " and ".join(tasks.values()))
    while tasks:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            name = tasks.pop(task)
            error = task.exception() if not task.cancelled() else None
            log.error("%s stopped%s", name, f": {error}" if error else "")
    return 1
