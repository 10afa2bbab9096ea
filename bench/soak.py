"""Soak: the real bot process under a steady mix of traffic for a set time, restarted every few minutes.

``python -m bot`` as a user starts it (testkit/bot_process.py, discord.py pointed at the loopback fake
Discord by testkit/on_fake_discord.py), its pool with tiny models on the CPU, the scripted fake LLM
(tests/fakes/openai_server.py). Rounds of traffic follow one another; one round is seven turns:

- a chat mention in channel A, an upload in channel B, a chat in a DM (these three at once);
- a drawing in channel A (the LLM calls generate_image);
- a Reroll press on that drawing, and an edit of B's upload through the LLM (edit_image), at once;
- the Edit button on the drawing: the form, then its submission (InstructPix2Pix).

Each turn is checked as the user sees it: answered exactly once, in its place (a reply to the asked
message, or to the pressed one), with the words and the image it should have. Every ``--restart-min``
minutes, between rounds, the bot gets SIGTERM, must exit 0 with its pool gone, and is started again on
the same data directory (the fake Discord stays: buttons posted before a restart are pressed after it).

Figures:
- ``soak_turns``, ``soak_errors``: turns answered; errors are turns unanswered within the turn timeout,
  answered twice or wrongly, interactions not acknowledged in 3 s, ERROR or Traceback lines in the bot's
  or the pool's log, routes the fake does not serve, LLM requests no rule matched, a restart that did not
  exit 0 or left its pool behind.
- ``bot_rss_growth_mib_per_hour``, ``pool_rss_growth_mib_per_hour``: RSS of the bot and pool processes
  (/proc/PID/status VmRSS), sampled every few seconds. A restart makes new processes, so the growth is
  measured within each process life and never across a restart: in each life the samples before its
  warm-up ends are dropped (the first round answered in that life, plus ``--warmup-s``: imports,
  model loads, allocator pools and caches filling), and one slope is fitted by least squares over the
  remaining samples of all lives together, each life with its own intercept (a pooled within-life fit).
  A steady leak shows as a positive slope in every life; the step a restart resets does not count.
  Goal: <= 50 MiB/hour each, in a run of at least 30 minutes; a 60 s smoke run fits seconds of samples,
  so its slopes are printed but not held to the goal.
- ``sqlite_bytes_per_turn``: growth of DATA_DIR/bot.db's logical size (pages in use, its WAL included)
  from the first life's start to the end, per turn answered; ``data_dir_growth_mib_per_hour``: growth of
  the whole data directory (stored images, the database, the logs) per hour of traffic (start-ups not
  counted).
- ``p95_turn_s``: 95th percentile of a turn's time, from the event pushed (the press, for buttons; the
  form's submission, for the Edit button) to its answer posted.

    .venv/bin/python bench/soak.py [--minutes 35] [--restart-min 10] [--smoke]

``--smoke``: 60 s of traffic, a restart after 30 s, no warm-up beyond the first round. The first life runs two
rounds at least (the first one loads the models), every later one a round, and a smoke run starts the bot
twice at least: on a slow machine it goes over its minute rather than leave out the restart.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from testkit.bot_process import BotProcess, gone, small_config
from testkit.images import house
from testkit.pool import tiny_models
from tests.fakes.discord_payloads import BOT_ID, GUILD_ID, message, user
from tests.fakes.discord_requests import Request
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.openai_server import FakeLLM, text_of

FIGURES = ("soak_turns", "soak_errors", "bot_rss_growth_mib_per_hour", "pool_rss_growth_mib_per_hour",
           "sqlite_bytes_per_turn", "data_dir_growth_mib_per_hour", "p95_turn_s")
TOKEN_ENV = "DISCORD_TOKEN_FOR_SOAK"
WARM_SAMPLES = 3  # RSS samples a life needs, once warm, for its slope to count
A, B, DM = "3101", "3102", "9100"  # two channels of the guild, and a DM's channel
ANN, BOB, DAN = user("4201", "ann"), user("4202", "bob"), user("4203", "dan")  # dan writes in the DM
HELLO, KEPT, SECRET, CAT, SNOWY = ("Hello! Ask me to draw something.", "A fine photo; I kept it.",
                                   "Noted, only between us.", "Here is your cat.", "Snowy now.")
EXTRA_MODELS = "[models.InstructPix2Pix]\ndevice = \"cpu\"\nsource = \"{tiny}/pix2pix\"\n"


@dataclass
class Life:
    """One bot process from its start to its stop: its RSS samples (seconds, MiB) and when it was warm."""
    started: float
    warm_at: float | None = None
    bot: list[tuple[float, float]] = field(default_factory=list)
    pool: list[tuple[float, float]] = field(default_factory=list)

    def warm(self, which: str) -> list[tuple[float, float]]:
        """The samples of ``which`` ("bot", "pool") taken once the life was warm: what its slope is fitted on."""
        return [(t, m) for t, m in getattr(self, which) if self.warm_at is not None and t >= self.warm_at]


def rss_mib(pid: int | None) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, TypeError):
        pass
    return None


def growth_per_hour(lives: list[Life], which: str) -> float:
    """The pooled within-life least-squares slope of RSS over time, in MiB per hour (warm samples only)."""
    sxy = sxx = 0.0
    for life in lives:
        pts = life.warm(which)
        if len(pts) < WARM_SAMPLES:
            continue
        mt, mm = statistics.fmean(t for t, _ in pts), statistics.fmean(m for _, m in pts)
        sxy += sum((t - mt) * (m - mm) for t, m in pts)
        sxx += sum((t - mt) ** 2 for t, _ in pts)
    return sxy / sxx * 3600 if sxx else float("nan")


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def db_bytes(db: Path) -> int:
    """The database's logical size (page count x page size), its write-ahead log included: the file alone
    shrinks and grows as the WAL is checkpointed."""
    if not db.exists():
        return 0
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as con:
        return con.execute("PRAGMA page_count").fetchone()[0] * con.execute("PRAGMA page_size").fetchone()[0]


def data_bytes(data: Path, db: Path) -> int:
    """The data directory's bytes, the database counted by its logical size."""
    files = [p for p in data.rglob("*") if p.is_file() and not p.name.startswith(db.name)] if data.exists() else []
    return sum(p.stat().st_size for p in files) + db_bytes(db)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def replies_to(r: Request) -> str | None:
    """The id of the message ``r`` replies to (discord.py sends it as a number)."""
    mid = ((r.json or {}).get("message_reference") or {}).get("message_id")
    return None if mid is None else str(mid)


class Soak:
    def __init__(self, fake: FakeDiscord, llm: FakeLLM, turn_timeout: float):
        self.fake, self.llm, self.turn_timeout = fake, llm, turn_timeout
        self.seconds: list[float] = []
        self.errors: list[str] = []
        self.answers: list[tuple[str, object]] = []  # (what, predicate): each must match exactly one post
        self.rounds = 0

    def error(self, text: str) -> None:
        self.errors.append(text)
        print(f"error: {text}", flush=True)

    async def _answer(self, what: str, channel: str, since: float, wanted) -> Request | None:
        """The post in ``channel`` that ``wanted`` accepts; its time since ``since`` is the turn's."""
        try:
            got = await self.fake.wait_for_request("POST", rf"^/channels/{channel}/messages$", where=wanted,
                                                   timeout=self.turn_timeout)
        except AssertionError:
            self.error(f"{what}: no answer in {self.turn_timeout:g} s")
            return None
        self.seconds.append(got.at - since)
        self.answers.append((what, (channel, wanted)))
        return got

    async def say(self, what: str, channel: str, text: str, author: dict, expect: str, *, image: bool = False,
                  attachments: list = (), dm: bool = False) -> Request | None:
        """A mention (a DM: a plain message) answered with ``expect``, with an image or without."""
        msg = message(channel, text if dm else f"<@{BOT_ID}> {text}", author, guild_id=None if dm else GUILD_ID,
                      mentions=[] if dm else [self.fake.bot_user], attachments=attachments)
        pushed = await self.fake.push("MESSAGE_CREATE", msg)
        return await self._answer(what, channel, pushed, lambda r: replies_to(r) == msg["id"]
                                  and r.content == expect and len(r.files) == int(image))

    async def press(self, what: str, posted: Request, action: str, author: dict, done: str,
                    instruction: str | None = None) -> Request | None:
        """A button under ``posted`` (the Edit form filled in with ``instruction``): the result replies to it."""
        button = next((b["custom_id"] for row in posted.response["components"] for b in row["components"]
                       if b.get("custom_id", "").startswith(f"vc:{action}:")), None)
        if button is None:
            self.error(f"{what}: no {action} button under the drawing")
            return None
        interaction = self.fake.press(posted, button, author=author)
        sent = await self.fake.push("INTERACTION_CREATE", interaction)
        try:
            callback = await self.fake.answered(interaction)
        except AssertionError as e:
            self.error(f"{what}: {e}")
            return None
        if instruction is not None:
            if callback.json["type"] != 9:
                self.error(f"{what}: the Edit button opened no form ({callback.json})")
                return None
            sent = await self.fake.push("INTERACTION_CREATE", self.fake.submit(callback, {"instruction": instruction},
                                                                               author=author))
        channel, mid = posted.response["channel_id"], posted.response["id"]
        return await self._answer(what, channel, sent, lambda r: replies_to(r) == mid
                                  and (r.content or "").startswith(done) and len(r.files) == 1)

    async def round(self) -> None:
        n = self.rounds = self.rounds + 1
        jpeg = io.BytesIO()
        house(sky=(n % 256, 120, 200)).save(jpeg, "JPEG")
        upload = self.fake.add_file(jpeg.getvalue(), f"photo{n}.jpg", "image/jpeg", channel_id=B)
        _, uploaded, _ = await asyncio.gather(
            self.say("chat", A, f"hello from round {n}", ANN, HELLO),
            self.say("upload", B, f"keep this photo {n}", BOB, KEPT, attachments=[upload]),
            self.say("dm", DM, f"secret note {n}", DAN, SECRET, dm=True))
        drawing = await self.say("drawing", A, f"draw a cat {n}", ANN, CAT, image=True)
        edits = []
        if uploaded is not None:
            said = [text_of(r["messages"][-1]["content"]) for r in self.llm.requests
                    if f"keep this photo {n}" in text_of(r["messages"][-1]["content"])]
            found = re.search(r"\[uploaded (img\d+)", said[-1]) if said else None
            if found is None:
                self.error(f"upload {n}: the LLM was not told the upload's id")
            else:
                self.llm.on(user=f"make it winter {n}", after_tool=False).call(
                    "edit_image", {"image": found[1], "instruction": "make it winter"})
                edits.append(self.say("edit", B, f"make it winter {n}", BOB, SNOWY, image=True))
        if drawing is not None:
            edits.append(self.press("reroll", drawing, "reroll", BOB, "Rerolled "))
        await asyncio.gather(*edits)
        if drawing is not None:
            await self.press("edit button", drawing, "edit", ANN, "Edited ", "make it look like winter")

    def check_once(self) -> None:
        """Every answer was posted exactly once (a turn handled twice would post it again)."""
        for what, (channel, wanted) in self.answers:
            count = len(self.fake.matching("POST", rf"^/channels/{channel}/messages$", wanted))
            if count != 1:
                self.error(f"{what}: answered {count} times")


def script(llm: FakeLLM) -> None:
    llm.on(user="hello from round", after_tool=False, times=None).reply(HELLO)
    llm.on(user="keep this photo", after_tool=False, times=None).reply(KEPT)
    llm.on(user="secret note", after_tool=False, times=None).reply(SECRET)
    llm.on(user="draw a cat", after_tool=False, times=None).call("generate_image", {"prompt": "a cat"})
    llm.on(after_tool="generate_image", times=None).reply(CAT)
    llm.on(after_tool="edit_image", times=None).reply(SNOWY)


def log_problems(text: str) -> list[str]:
    return [line for line in text.splitlines() if " ERROR " in line or line.startswith("Traceback")]


async def main(args, folder: Path) -> None:
    # SIGTERM (a harness stopping the bench) cancels the run like Ctrl-C: the finally blocks kill the bot and pool
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    tiny = tiny_models()
    llm = FakeLLM(strict=False)
    await llm.start()
    script(llm)
    fake = FakeDiscord(token="soak-token", watch=())
    await fake.start()
    for c in (A, B):
        fake.add_channel(c)
    config = small_config(folder, tiny, llm.base_url, EXTRA_MODELS.format(tiny=tiny)
                          + f'[bot]\nshutdown_grace_s = 5\n[discord]\ntoken_env = "{TOKEN_ENV}"\n')
    data, db = folder / "data", folder / "data" / "bot.db"
    soak = Soak(fake, llm, args.turn_timeout)
    lives: list[Life] = []
    logs = folder / "soak-bot.log"
    traffic = 0.0  # seconds of traffic, start-ups and stops left out
    baseline: tuple[int, int] | None = None
    warnings: dict[str, int] = {}
    wall = time.monotonic()
    try:
        while traffic < args.minutes * 60 or len(lives) < args.min_lives:
            identified = sum(1 for f in fake.gateway_received if f.get("op") == 2)
            async with BotProcess(config, env={TOKEN_ENV: fake.token}, discord=fake.base) as bot:
                start = time.monotonic()
                while sum(1 for f in fake.gateway_received if f.get("op") == 2) == identified:
                    if bot.proc.returncode is not None or time.monotonic() - start > args.start_timeout:
                        raise RuntimeError(f"the bot did not connect:\n{bot.log.read_text()[-3000:]}")
                    await asyncio.sleep(0.2)
                await asyncio.sleep(0.5)  # READY and the guilds are sent: the client gets to them
                life = Life(time.monotonic())
                lives.append(life)
                print(f"life {len(lives)}: connected after {life.started - start:.1f} s", flush=True)
                if baseline is None:
                    baseline = (db_bytes(db), data_bytes(data, db))
                sampler = asyncio.create_task(sample(bot, life, args.sample_s))
                life_end = life.started + args.restart_min * 60
                rounds = 0
                # at least two rounds in the first life (the first loads the models; RSS is fitted after it), one
                # in the others, and enough warm samples for a slope (a slow machine's short smoke lives had none)
                try:
                    while True:
                        now = time.monotonic()
                        if not (rounds < (2 if len(lives) == 1 else 1)
                                or (len(life.warm("pool")) < WARM_SAMPLES and now < life_end + 60)
                                or (now < life_end and traffic + now - life.started < args.minutes * 60)):
                            break
                        await soak.round()
                        rounds += 1
                        if life.warm_at is None:
                            life.warm_at = time.monotonic() + args.warmup_s
                finally:
                    sampler.cancel()
                    traffic += time.monotonic() - life.started
                stopping = time.monotonic()
                pool = bot.pool_pid(wait=0)
                bot.proc.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(bot.proc.wait(), 120)
                pool_gone = pool is None or await gone(pool, 30)
                print(f"life {len(lives)}: {soak.rounds} rounds so far; SIGTERM -> exit {code} in "
                      f"{time.monotonic() - stopping:.1f} s, pool {'gone' if pool_gone else 'LEFT RUNNING'}",
                      flush=True)
                if code != 0 or not pool_gone:
                    soak.error(f"restart {len(lives)}: exit code {code}, pool gone: {pool_gone}")
            text = bot.log.read_text(errors="replace")
            with logs.open("a") as f:
                f.write(f"----- life {len(lives)}\n{text}")
            for line in log_problems(text):
                soak.error(f"log: {line[:300]}")
            for line in text.splitlines():
                if " WARNING " in line:
                    key = line.split(" WARNING ", 1)[1][:120]
                    warnings[key] = warnings.get(key, 0) + 1
        soak.check_once()
    finally:
        await llm.stop()
        try:
            await fake.stop()
        except AssertionError as e:  # an interaction without its callback in time: already counted
            print(f"fake Discord at its stop: {str(e)[:500]}")
    errors = len(soak.errors) + len(fake.unimplemented) + len(llm.unmatched)
    for route in fake.unimplemented:
        print(f"error: unimplemented route {route}")
    for request in llm.unmatched:
        print(f"error: no LLM rule for {text_of(request['messages'][-1]['content'])[:200]!r}")
    db_grew, data_grew = db_bytes(db) - baseline[0], data_bytes(data, db) - baseline[1]
    turns, hours = len(soak.seconds), traffic / 3600
    print(f"{turns} turns in {soak.rounds} rounds, {traffic / 60:.1f} min of traffic over {len(lives)} process "
          f"lives ({(time.monotonic() - wall) / 60:.1f} min in all); data dir now {size(data) / 2**20:.1f} MiB "
          f"(images {size(data / 'images') / 2**20:.1f} MiB, bot.db {db_bytes(db) / 2**10:.0f} KiB)")
    for i, life in enumerate(lives, 1):
        for which in ("bot", "pool"):
            pts = getattr(life, which)
            if pts:
                print(f"life {i} {which} RSS: first {pts[0][1]:.0f} MiB, last {pts[-1][1]:.0f} MiB, "
                      f"max {max(m for _, m in pts):.0f} MiB ({len(pts)} samples)")
    print(f"turn seconds: p50 {pct(soak.seconds, 50):.2f}, p95 {pct(soak.seconds, 95):.2f}, "
          f"max {max(soak.seconds, default=float('nan')):.2f}")
    for line, count in sorted(warnings.items(), key=lambda kv: -kv[1])[:10]:
        print(f"warning x{count}: {line}")
    print(f"soak_turns={turns}")
    print(f"soak_errors={errors}")
    print(f"bot_rss_growth_mib_per_hour={growth_per_hour(lives, 'bot'):.1f}")
    print(f"pool_rss_growth_mib_per_hour={growth_per_hour(lives, 'pool'):.1f}")
    print(f"sqlite_bytes_per_turn={db_grew / max(turns, 1):.0f}")
    print(f"data_dir_growth_mib_per_hour={data_grew / 2**20 / hours:.1f}")
    print(f"p95_turn_s={pct(soak.seconds, 95):.2f}")


async def sample(bot: BotProcess, life: Life, every: float) -> None:
    while True:
        now = time.monotonic()
        for pid, samples in ((bot.proc.pid, life.bot), (bot.pool_pid(wait=0), life.pool)):
            mib = rss_mib(pid)
            if mib is not None:
                samples.append((now, mib))
        await asyncio.sleep(every)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=35, help="minutes of traffic (start-ups not counted)")
    parser.add_argument("--restart-min", type=float, default=10, help="SIGTERM and start again this often")
    parser.add_argument("--warmup-s", type=float, default=120, help="RSS samples left out after a life's first round")
    parser.add_argument("--sample-s", type=float, default=5, help="seconds between RSS samples")
    parser.add_argument("--turn-timeout", type=float, default=120, help="a turn unanswered this long is an error")
    parser.add_argument("--start-timeout", type=float, default=300, help="seconds for the bot to connect")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (the logs, the data)")
    parser.add_argument("--min-lives", type=int, default=1, help="start the bot at least this often")
    parser.add_argument("--smoke", action="store_true", help="60 s of traffic, a restart after 30 s")
    args = parser.parse_args()
    if args.smoke:
        args.minutes, args.restart_min, args.warmup_s, args.sample_s, args.min_lives = 1.0, 0.5, 0.0, 0.5, 2
    try:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            asyncio.run(main(args, args.keep.resolve()))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                asyncio.run(main(args, Path(tmp)))
    except (asyncio.CancelledError, KeyboardInterrupt):
        sys.exit("soak: stopped before its end; the bot and its pool were killed")
