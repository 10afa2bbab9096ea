"""python -m gpu_pool --config config.toml: run the model pool on its own."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpu_pool", description=__doc__)
    parser.add_argument("--config", default="config.toml", help="config file (default: config.toml)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level,
                        format="%(asctime)s %(levelname)s pool %(name)s: %(message)s")
    try:
        config = settings.load(args.config, env_check=False)
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

    async def run() -> None:
        task = asyncio.create_task(serve(config))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            logging.getLogger("gpu_pool").info("pool stopping")

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
