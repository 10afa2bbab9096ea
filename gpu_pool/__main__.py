"""python -m gpu_pool --config config.toml [--load "Name_device,..."]: run the model pool on its own.

Started by the bot, the pool dies with it: the bot names itself in
``GPU_POOL_PARENT_PID``, and the pool asks Linux for SIGTERM when its parent
dies (``prctl(PR_SET_PDEATHSIG)``) and also checks its parent every second
(any OS, and the moment before prctl took effect). SIGTERM and SIGINT stop it
at once: jobs and loads still running in threads are abandoned, not awaited.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import signal
import sys

import settings
from gpu_pool import heap

PARENT_ENV = "GPU_POOL_PARENT_PID"
PR_SET_PDEATHSIG = 1
log = logging.getLogger("gpu_pool")


def follow_parent() -> int | None:
    """The bot's pid when it started this pool (then die with it), else None."""
    parent = os.environ.get(PARENT_ENV, "")
    if not parent.isdigit():
        return None
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
                log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d); watching the parent instead",
                            ctypes.get_errno())
        except (OSError, AttributeError) as e:
            log.warning("no prctl (%s); watching the parent instead", e)
    return int(parent)


async def _watch(parent: int, stop) -> None:
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    log.warning("the bot (pid %d) is gone; stopping", parent)
    stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpu_pool", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="config.toml", help="config file (default: config.toml)")
    parser.add_argument("--load", default="", metavar='"Name_device,..."',
                        help="the models to load and their devices, instead of config.toml's [models.*] (the bot's "
                             "--load, passed on)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level,
                        format="%(asctime)s %(levelname)s pool %(name)s: %(message)s")
    from gpu_pool.fetch import log_hub_once  # huggingface_hub's warnings once each, through the format above

    log_hub_once()
    parent = follow_parent()
    if parent is not None and os.getppid() != parent:
        log.warning("the bot (pid %d) exited before the pool started; not starting", parent)
        return 0
    try:
        config = settings.load(args.config, env_check=False, load=args.load)
    except settings.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if config.pool.backend == "ray":  # the replicas run the models; see gpu_pool/ray/
        try:
            from gpu_pool.ray.front import serve_on_ray as serve
        except ModuleNotFoundError as e:
            print(f'config error: pool.backend = "ray" needs Ray Serve ({e}); ./scripts/run --ray installs it',
                  file=sys.stderr)
            return 2
    else:
        from gpu_pool.server import serve  # late: imports torch

    heap.keep_freed_buffers()  # each job's image buffers reused, not mapped anew (gpu_pool/heap.py)

    async def run() -> None:
        task = asyncio.create_task(serve(config))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        watch = asyncio.create_task(_watch(parent, task.cancel)) if parent is not None else None
        try:
            await task
        except asyncio.CancelledError:
            log.info("pool stopping")
        finally:
            if watch:
                watch.cancel()

    asyncio.run(run())
    return 0


def run() -> None:  # the vchat-pool command (pyproject.toml)
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # threads still running a job or a load are not waited for


if __name__ == "__main__":
    run()
