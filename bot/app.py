"""Wire the parts together and run until stopped: store, pool, LLM, core, adapters.

SIGTERM and SIGINT stop the bot cleanly: the core stops taking turns and gives
the ones in flight ``bot.shutdown_grace_s`` to finish (the rest are answered
"I'm restarting; please ask again" and their status messages removed), then the
adapters disconnect, the pool stops, and the bot exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time

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


def build_core(config: settings.Config, *, pool_client: type[PoolClient] = PoolClient, llm_retries: int = 1,
               status_interval: float = 1.0) -> Core:
    """The core's object graph, wired here only (the bot, tests and benches all call this): the session
    store and image store under ``[storage] data_dir``, a ``pool_client`` for ``[pool] url`` (a subclass
    that measures, in benches), the LLM (``build_llm``; ``llm_retries``: 0 where a fake answers), and
    ``status_interval``, the status messages' pacing (0 in tests: at once)."""
    data = config.storage.data_dir
    data.mkdir(parents=True, exist_ok=True)
    store = Store(data / "bot.db")
    lim = config.limits
    images = ImageStore(data / "images", store, max_pixels=lim.max_image_pixels, max_bytes=lim.max_upload_bytes,
                        working_size=lim.working_size)
    return Core(config, store, images, pool_client(config.pool.url), build_llm(config, llm_retries),
                status_interval=status_interval)


def build_llm(config: settings.Config, max_retries: int = 1) -> LLM | None:
    """The configured server; with [llm] base_url empty, the pool's built-in model over the pool's socket."""
    if not config.llm.built_in:
        return LLM(config.llm, max_retries)
    if "LLM" not in config.models:
        log.warning("llm.base_url is empty and config.toml has no [models.LLM]: free text is off, commands work")
        return None
    return LLM(config.llm, max_retries, **local_llm.connection(config.pool.url))


def on_stop_signals() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT (the handlers replace Python's KeyboardInterrupt)."""
    loop, stop = asyncio.get_running_loop(), asyncio.Event()

    def received(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("%s again: already stopping, a few seconds more", sig.name)
            return
        log.info("%s: stopping", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, received, sig)
    return stop


async def run(config: settings.Config, force_terminal: bool = False) -> int:
    stop = on_stop_signals()
    core = build_core(config)
    pool = None
    in_terminal = force_terminal or not (config.discord.active or config.slack.active)
    data = config.storage.data_dir
    try:
        if config.pool.start:
            if in_terminal:
                print(f"Starting the image engine (logs: {data / 'bot.log'}, {data / 'pool.log'})", flush=True)
            # in the terminal chat the pool's output goes to a file: its log lines must not scroll through the chat
            pool = PoolProcess(config.path, config.pool.url, config.pool.startup_timeout_s,
                               log_file=data / "pool.log" if in_terminal else None, load=config.load)
            try:
                if not await _unless_stopped(pool.start(), stop):
                    return 0
            except RuntimeError as e:
                log.error("cannot start the image engine: %s", e)
                if in_terminal:
                    print(f"The image engine did not start: {e}. See {data / 'pool.log'}.", file=sys.stderr)
                return 1
        else:
            log.info("using the pool at %s", config.pool.url)
        platforms = []
        if config.discord.active and not force_terminal:
            from bot.adapters import discord_bot
            platforms.append(("Discord", discord_bot.run))
        if config.slack.active and not force_terminal:
            from bot.adapters import slack_bot
            platforms.append(("Slack", slack_bot.run))
        if not platforms:
            platforms.append(("terminal", lambda core, config: terminal.run(core)))
        return await serve_platforms(core, config, platforms, stop)
    finally:
        if pool:
            await pool.stop()
        await core.pool.close()
        if core.llm:
            await core.llm.close()


async def _unless_stopped(work, stop: asyncio.Event) -> bool:
    """Run ``work`` unless a stop signal comes first (then cancel it); True when it finished."""
    task, stopped = asyncio.ensure_future(work), asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False
    task.result()
    return True


async def serve_platforms(core: Core, config: settings.Config, platforms, stop: asyncio.Event) -> int:
    """Run every platform side by side until a stop signal (exit 0), the terminal chat ends (its code),
    or every platform has failed (1)."""
    tasks = {asyncio.create_task(run(core, config), name=name): name for name, run in platforms}
    log.info("serving %s", " and ".join(tasks.values()))
    stopped = asyncio.create_task(stop.wait())
    try:
        while tasks:
            done, _ = await asyncio.wait({*tasks, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if stopped in done:
                await shut_down(core, config, tasks)
                return 0
            for task in done:
                name = tasks.pop(task)
                if name == "terminal":
                    return task.result()
                error = task.exception() if not task.cancelled() else None
                log.error("%s stopped%s", name, f": {error}" if error else "")
        return 1
    finally:
        stopped.cancel()


async def shut_down(core: Core, config: settings.Config, tasks: dict[asyncio.Task, str]) -> None:
    """Answer or finish the turns in flight while the platforms are still connected, then disconnect."""
    started = time.monotonic()
    await core.stop(config.bot.shutdown_grace_s)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    log.info("stopped taking messages and answered the turns in flight in %.1f s", time.monotonic() - started)
