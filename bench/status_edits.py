"""Status edits under load: N users each ask for a drawing at the same moment, on Slack and on Discord.

The real slack-bolt and discord.py clients (bot/adapters/) over the loopback fakes
(tests/fakes/), the real Core with its production pacing (status after 1 s, at most
one edit a second per message, a shared edit budget per workspace / guild), the
scripted LLM and the tiny-model pool (one CPU device: the drawings queue, as on a
busy GPU). Counted at the fakes: ``chat.update`` calls (Slack) and message edits
(Discord, PATCH), per minute of the run, and the 429s the fakes answered; and the status
messages' posts and edits that carried the Cancel button and an ETA (issue 24), which must
not cost a call more.

    .venv/bin/python bench/status_edits.py [--drawings 20] [--steps 50] [--size 64] [--enforce-limits] [--smoke]

By default the fakes do not rate-limit, so the figure is what the bot asks for;
``--enforce-limits`` turns on Slack's Tier 3 and Discord's edit limits.
``--smoke``: 6 drawings of 30 steps at 96 px (about 0.3 s each on a calm 2-core CPU, so the last
ones queue long enough to show status messages; 4 at 64 px and 20 steps were all drawn within the 1 s
before a status shows, and the smoke saw none) with the limits enforced.
Ends with ``{slack,discord}_status_edits_per_min=<float>``,
``{slack,discord}_answered_429=<int>`` (0: within the platform's limits), and
``{slack,discord}_status_posts``, ``_status_posts_with_cancel`` (status messages posted; those
with the Cancel button), ``_statuses_with_eta`` (posts and edits that say how long is left).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import json
import os
import re
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

FIGURES = ("slack_status_edits_per_min", "discord_status_edits_per_min", "slack_answered_429", "discord_answered_429",
           "slack_status_posts", "discord_status_posts", "slack_status_posts_with_cancel",
           "discord_status_posts_with_cancel", "slack_statuses_with_eta", "discord_statuses_with_eta")
CANCEL = "vc:cancel:"  # a Cancel button's id (core/turn.py CancelButton)
ETA = re.compile(r"about \d[\d.]* (s|min|h)\b")  # "done in about 20 s", "about 3 s left"
TOKEN_ENV = "BENCH_DISCORD_TOKEN"
REPLY = "Here is your cat: img1"


def scripted_llm() -> FakeLLM:
    llm = FakeLLM()
    llm.on(user="draw a cat", after_tool=False, times=None).call("generate_image", {"prompt": "a cat"})
    llm.on(after_tool="generate_image", times=None).reply(REPLY)
    return llm


def decorated(posts: list[tuple[str, str]], edits: list[str]) -> tuple[int, int, int]:
    """(status posts, those with the Cancel button, posts and edits with an ETA) from the status messages
    posted (text, buttons as JSON) and the texts of their edits."""
    return len(posts), sum(CANCEL in b for _, b in posts), sum(bool(ETA.search(t)) for t in [t for t, _ in posts]
                                                               + edits)


async def slack_run(pool, folder: Path, n: int, enforce: bool) -> tuple[float, int, int, float, tuple]:
    """(edits per minute, edits, 429s, seconds, statuses) for n drawings at once on Slack."""
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
    posts = [(c.get("text") or "", json.dumps(c.get("blocks") or "")) for c in fake.called("chat.postMessage")
             if not (c.get("text") or "").startswith("Buttons for")]  # the answer's buttons, below its upload
    texts = [c.get("text") or "" for c in fake.called("chat.update") if c not in fake.rate_limited]
    return edits / (seconds / 60), edits, limited, seconds, decorated(posts, texts)  # the answer is an upload


async def discord_run(pool, folder: Path, n: int, enforce: bool) -> tuple[float, int, int, float, tuple]:
    """(edits per minute, edits, 429s, seconds, statuses) for n drawings at once in one Discord guild."""
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
    posts = [((r.json or {}).get("content") or "", json.dumps((r.json or {}).get("components") or ""))
             for r in fake.matching("POST", r"^/channels/\d+/messages$") if not r.files]  # the answer has one
    texts = [(r.json or {}).get("content") or "" for r in fake.matching("PATCH", r"^/channels/\d+/messages/\d+$")
             if r not in fake.rate_limited]
    return edits / (seconds / 60), edits, len(fake.rate_limited), seconds, decorated(posts, texts)


async def main(n: int, folder: Path, pool, enforce: bool) -> None:
    for name, run in (("slack", slack_run), ("discord", discord_run)):
        per_min, edits, limited, seconds, (posts, with_cancel, with_eta) = await run(pool, folder, n, enforce)
        print(f"{name}: {n} drawings at once answered in {seconds:.1f} s; {edits} status edits, "
              f"{limited} answered 429; {posts} status messages, {with_cancel} with a Cancel button; "
              f"{with_eta} posts and edits with an ETA")
        print(f"{name}_status_edits_per_min={per_min:.1f}")
        print(f"{name}_answered_429={limited}")
        print(f"{name}_status_posts={posts}")
        print(f"{name}_status_posts_with_cancel={with_cancel}")
        print(f"{name}_statuses_with_eta={with_eta}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--drawings", type=int, default=20)
    parser.add_argument("--steps", type=int, default=50, help="at most this many diffusion steps (fewer: shorter jobs)")
    parser.add_argument("--size", type=int, default=64, help="working size in px (larger: longer jobs, a longer run)")
    parser.add_argument("--enforce-limits", action="store_true", help="the fakes answer 429 beyond the limits")
    parser.add_argument("--smoke", action="store_true", help="6 drawings of 30 steps at 96 px, the limits enforced")
    args = parser.parse_args()
    if args.smoke:
        args.drawings, args.steps, args.size, args.enforce_limits = 6, 30, 96, True
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        running = start_pool_with(drawing_config(Path(tmp), args.size, args.steps))
        try:
            asyncio.run(main(args.drawings, Path(tmp), running, args.enforce_limits))
        finally:
            stop_pool(running)
