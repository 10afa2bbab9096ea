"""Discord end to end under load: N channels mention the bot at the same moment.

The real discord.py client (bot/adapters/discord_bot.py) over the loopback fake
Discord (tests/fakes/discord_server.py), the real Core, the scripted LLM (FakeLLM)
and the tiny-model pool in its own process (started in a temporary folder, as the
tests do). Each channel asks for a drawing: the LLM calls generate_image, then replies.

Per channel, measured at the fakes:
- first sign of life: event pushed -> first typing or status request at the fake Discord
- total: event pushed -> the answer with its image at the fake Discord
- LLM: time the fake LLM spent answering that channel's requests (inside its handler)
- model: the seconds the pool reports inside the model (its done events)
- pool queue: the job's wall time at the core minus the model seconds (waiting behind
  other channels: one CPU device runs one job at a time)
- overhead = total - LLM - model (includes the pool queue); and the same less the pool queue

    .venv/bin/python bench/discord_e2e.py [--channels 50] [--smoke]

``--smoke``: 3 channels, a pool with only the tiny Text2Image (2 steps) and safety checker.
Ends with ``errors=<int>`` and ``first_sign_p95_ms=<float>``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench.harness import bench_core, discord_bot, drawing_config
from core.pool_client import PoolClient
from testkit.pool import start_pool, start_pool_with, stop_pool
from tests.fakes.discord_payloads import BOT_ID, message, user
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.openai_server import FakeLLM, last_user_text

FIGURES = ("errors", "first_sign_p95_ms")
TOKEN_ENV = "DISCORD_TOKEN_FOR_BENCH"
REPLY = "Here is your cat: img1"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


class TimedLLM(FakeLLM):
    """The scripted LLM, timing how long it spends on each channel's requests."""

    def __init__(self) -> None:
        super().__init__()
        self.spent: dict[str, float] = defaultdict(float)

    async def _chat(self, request):
        started = time.perf_counter()
        body = await request.json()  # aiohttp keeps the body: the parent reads it again
        response = await super()._chat(request)
        self.spent[last_user_text(body).rsplit(" ", 1)[-1]] += time.perf_counter() - started
        return response


class TimedPool(PoolClient):
    """The core's pool client, keeping each user's model seconds and job wall time."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.model_s: dict[str, float] = defaultdict(float)
        self.wall_s: dict[str, float] = defaultdict(float)

    async def run(self, request):
        started = time.perf_counter()
        async for ev in super().run(request):
            if ev.kind in ("done", "failed"):
                self.model_s[request.user] += ev.seconds or 0.0
                self.wall_s[request.user] += time.perf_counter() - started
            yield ev


async def ask(fake: FakeDiscord, channels: list[str], users: dict[str, str]) -> tuple[dict[str, float], dict]:
    """Every channel mentions the bot at once; returns push times and the answers by channel."""
    asks = [message(c, f"<@{BOT_ID}> draw a cat for channel {c}", user(users[c]), mentions=[fake.bot_user])
            for c in channels]
    pushed = await asyncio.gather(*(fake.push("MESSAGE_CREATE", m) for m in asks))
    wanted = set(channels)
    answers = await fake.wait_for_requests(
        "POST", r"^/channels/\d+/messages$", len(channels), timeout=60 + 5 * len(channels),
        where=lambda r: r.files and r.path.split("/")[2] in wanted)
    return dict(zip(channels, pushed)), {a.path.split("/")[2]: a for a in answers}


async def main(n: int, folder: Path, pool) -> None:
    llm = TimedLLM()
    await llm.start()
    llm.on(user="draw a cat", after_tool=False, times=None).call("generate_image", {"prompt": "a cat"})
    llm.on(after_tool="generate_image", times=None).reply(REPLY)
    core = bench_core(pool, folder / "data", llm.base_url, TOKEN_ENV, TimedPool)
    warm = "2999"
    channels = [str(3100 + i) for i in range(n)]
    users = {c: str(7000 + i) for i, c in enumerate([warm, *channels])}
    fake = FakeDiscord()
    await fake.start()
    for c in [warm, *channels]:
        fake.add_channel(c)
    async with discord_bot(core, fake, llm, TOKEN_ENV) as bot:
        await ask(fake, [warm], users)  # the pool's first job is slower: not measured
        wall = time.perf_counter()
        pushed, answers = await ask(fake, channels, users)
        wall = time.perf_counter() - wall
        await bot.idle()

    first, total, llm_s, model_s, queue_s, overhead, overhead_nq = [], [], [], [], [], [], []
    errors = len(fake.logged_errors) + len(fake.unimplemented) + len(llm.unmatched)
    for c in channels:
        answer = answers.get(c)
        if answer is None or answer.content != REPLY or len(answer.files) != 1:
            errors += 1
            continue
        signs = [r.at for r in fake.requests if r.method == "POST"
                 and r.path in (f"/channels/{c}/typing", f"/channels/{c}/messages")]
        first.append((min(signs) - pushed[c]) * 1000)
        t = answer.at - pushed[c]
        u = users[c]
        total.append(t * 1000)
        llm_s.append(llm.spent[c] * 1000)
        model_s.append(pool_model := core.pool.model_s[u] * 1000)
        queue_s.append(core.pool.wall_s[u] * 1000 - pool_model)
        overhead.append(t * 1000 - llm.spent[c] * 1000 - pool_model)
        overhead_nq.append(overhead[-1] - queue_s[-1])

    print(f"{n} channels at once, all answered in {wall:.1f} s (pool: one CPU device, jobs run one at a time)")
    for name, xs in (("first sign of life", first), ("total", total), ("LLM (fake server)", llm_s),
                     ("model (pool-reported)", model_s), ("pool queue wait", queue_s),
                     ("overhead incl. queue", overhead), ("overhead excl. queue", overhead_nq)):
        print(f"{name:>24}: p50 {pct(xs, 50):9.1f} ms   p95 {pct(xs, 95):9.1f} ms   max {max(xs, default=0):9.1f} ms")
    print(f"errors={errors}")
    print(f"first_sign_p95_ms={pct(first, 95):.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", type=int, default=50)
    parser.add_argument("--smoke", action="store_true", help="3 channels, drawings of 2 steps")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        running = start_pool_with(drawing_config(Path(tmp), steps=2)) if args.smoke else start_pool(Path(tmp))
        try:
            asyncio.run(main(3 if args.smoke else args.channels, Path(tmp), running))
        finally:
            stop_pool(running)
