"""How long the bot takes to stop, and whether its pool goes with it.

The real ``python -m bot`` (terminal chat) with two tiny models and a scripted LLM
that never answers, so a turn is in flight when the signal comes:

- SIGTERM: seconds from the signal to the bot's exit (grace period, the honest
  "I'm restarting" answer, the pool's stop), and its exit code;
- SIGKILL of the bot: seconds until its pool process is gone by itself.

    .venv/bin/python bench/shutdown.py [--grace 5] [--smoke]

``--smoke``: a grace period of 1 s. Ends with ``sigterm_exit_code=``, ``sigterm_stop_s=<float>`` and
``pool_gone_after_sigkill_s=<float>``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
import time
from pathlib import Path

from testkit.bot_process import BotProcess, alive, gone, small_config
from testkit.pool import tiny_models
from tests.fakes.openai_server import FakeLLM

FIGURES = ("sigterm_exit_code", "sigterm_stop_s", "pool_gone_after_sigkill_s")
TINY = tiny_models()


async def sigterm(folder: Path, grace: float) -> None:
    async with FakeLLM(strict=False) as llm:
        llm.on(user="think it over").hang()
        config = small_config(folder, TINY, llm.base_url, f"[bot]\nshutdown_grace_s = {grace}\n")
        async with BotProcess(config, "--terminal") as bot:
            await bot.read_until("Type /help")
            pool = bot.pool_pid()
            bot.proc.stdin.write(b"think it over\n")
            await bot.read_until("bot: ...")  # the turn has started
            await asyncio.sleep(0.5)
            signalled = time.monotonic()
            bot.proc.send_signal(signal.SIGTERM)
            code = await bot.proc.wait()
            took = time.monotonic() - signalled
            said = (await bot.proc.stdout.read()).decode().strip()
            print(f"SIGTERM with a turn in flight (grace {grace:g} s): exit code {code} after {took:.2f} s; "
                  f"the chat said {said!r}; pool {'gone' if await gone(pool, 10) else 'STILL RUNNING'}")
            print(f"sigterm_exit_code={code}")
            print(f"sigterm_stop_s={took:.2f}")


async def sigkill(folder: Path) -> None:
    config = small_config(folder, TINY)
    async with BotProcess(config, "--terminal") as bot:
        await bot.read_until("Type /help")
        pool = bot.pool_pid()
        killed = time.monotonic()
        bot.proc.kill()
        await bot.proc.wait()
        ok = await gone(pool, 30)
        took = time.monotonic() - killed
        print(f"SIGKILL of the bot: its pool (pid {pool}) {'exited by itself' if ok else 'is STILL RUNNING'} "
              f"after {took:.2f} s")
        print(f"pool_gone_after_sigkill_s={took:.2f}")
        assert ok and not alive(pool)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grace", type=float, default=5.0, help="bot.shutdown_grace_s (the shipped default: 5)")
    parser.add_argument("--smoke", action="store_true", help="a grace period of 1 s")
    args = parser.parse_args()
    if args.smoke:
        args.grace = 1.0
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        asyncio.run(sigterm(Path(a), args.grace))
        asyncio.run(sigkill(Path(b)))
