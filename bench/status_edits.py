"""Status edits under load: N users each ask for a drawing at the same moment, on Slack and on Discord.

The real slack-bolt and discord.py clients (bot/adapters/) over the loopback fakes
(tests/fakes/), the real Core with its production pacing (status after 1 s, at most
one edit a second per message, a shared edit budget per workspace / guild), the
scripted LLM and the tiny-model pool (one CPU device: the drawings queue, as on a
busy GPU). Counted at the fakes: ``chat.update`` calls (Slack) and message edits
(Discord, PATCH), per minute of the run, and the 429s the fakes answered.

    .venv/bin/python bench/status_edits.py [--drawings 20] [--steps 50] [--size 64] [--enforce-limits] [--smoke]

By default the fakes do not rate-limit, so the figure is what the bot asks for;
``--enforce-limits`` turns on Slack's Tier 3 and Discord's edit limits.
``--smoke``: 2 drawings of 2 steps. Ends with ``slack_status_edits_per_min=<float>`` and
``discord_status_edits_per_min=<float>``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
from pathlib import Path

from bench.harness import bench_core, discord_bot, drawing_config, shut_down
from bot.adapters.slack_bot import SlackBot
from testkit.pool import start_pool_with, stop_pool
from tests.fakes.discord_payloads import BOT_ID, message, user
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.openai_server import FakeLLM
from tests.fakes.slack_payloads import BOT_USER, mention
from tests.fakes.slack_server import FakeSlack

FIGURES = ("slack_status_edits_per_min", "discord_status_edits_per_min")
TOKEN_ENV = "BENCH_DISCORD_TOKEN"
REPLY = "Here is your cat: img1"


def scripted_llm() -> FakeLLM:
    llm = FakeLLM()
    llm.on(user="draw a cat", after_tool=False, times=None).call("generate_image", {"prompt": "a cat"})
    llm.on(after_tool="generate_image", times=None).reply(REPLY)
    return llm


async def slack_run(pool, folder: Path, n: int, enforce: bool) -> tuple[float, int, int, float]:
    """(edits per minute, edits, 429s, seconds) for n drawings at once on Slack."""
    llm = await scripted_llm().start()
    core = bench_core(pool, folder / "slack", llm.base_url, TOKEN_ENV)
    fake = await FakeSlack().start()
    if not enforce:
        fake.rate_limits.clear()
    os.environ.update(SLACK_BOT_TOKEN=fake.bot_token, SLACK_APP_TOKEN=fake.app_token)
    bot = SlackBot(core, core.config, base_url=fake.base_url, host="127.0.0.1")
    try:
        await bot.start()
        started = time.monotonic()
        events = [mention(f"C{100 + i}", f"U{100 + i}", f"<@{BOT_USER}> draw a cat {i}") for i in range(n)]
        await asyncio.gather(*(fake.push_event(e) for e in events))
        await fake.wait_for("files.completeUploadExternal", count=n, timeout=120 + 60 * n)
        await bot.idle()
        seconds = time.monotonic() - started
    finally:
        await shut_down(bot, fake, llm, core)
    edits = len(fake.called("chat.update"))
    limited = len(fake.rate_limited)
    return edits / (seconds / 60), edits, limited, seconds


async def discord_run(pool, folder: Path, n: int, enforce: bool) -> tuple[float, int, int, float]:
    """(edits per minute, edits, 429s, seconds) for n drawings at once in one Discord guild."""
    llm = await scripted_llm().start()
    core = bench_core(pool, folder / "discord", llm.base_url, TOKEN_ENV)
    fake = await FakeDiscord().start()
    if not enforce:
        fake.edit_limit = (10**9, 1.0)
    channels = [str(3100 + i) for i in range(n)]
    for c in channels:
        fake.add_channel(c)
    async with discord_bot(core, fake, llm, TOKEN_ENV) as bot:
        started = time.monotonic()
        asks = [message(c, f"<@{BOT_ID}> draw a cat {i}", user(str(7000 + i)), mentions=[fake.bot_user])
                for i, c in enumerate(channels)]
        await asyncio.gather(*(fake.push("MESSAGE_CREATE", m) for m in asks))
        await fake.wait_for_requests("POST", r"^/channels/31\d\d/messages$", n, timeout=120 + 60 * n,
                                     where=lambda r: bool(r.files))
        await bot.idle()
        seconds = time.monotonic() - started
    edits = len(fake.matching("PATCH", r"^/channels/\d+/messages/\d+$"))
    return edits / (seconds / 60), edits, len(fake.rate_limited), seconds


async def main(n: int, folder: Path, pool, enforce: bool) -> None:
    for name, run in (("slack", slack_run), ("discord", discord_run)):
        per_min, edits, limited, seconds = await run(pool, folder, n, enforce)
        print(f"{name}: {n} drawings at once answered in {seconds:.1f} s; {edits} status edits, "
              f"{limited} answered 429")
        print(f"{name}_status_edits_per_min={per_min:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--drawings", type=int, default=20)
    parser.add_argument("--steps", type=int, default=50, help="at most this many diffusion steps (fewer: shorter jobs)")
    parser.add_argument("--size", type=int, default=64, help="working size in px (larger: longer jobs, a longer run)")
    parser.add_argument("--enforce-limits", action="store_true", help="the fakes answer 429 beyond the limits")
    parser.add_argument("--smoke", action="store_true", help="2 drawings of 2 steps")
    args = parser.parse_args()
    if args.smoke:
        args.drawings, args.steps = 2, 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        running = start_pool_with(drawing_config(Path(tmp), args.size, args.steps))
        try:
            asyncio.run(main(args.drawings, Path(tmp), running, args.enforce_limits))
        finally:
            stop_pool(running)
