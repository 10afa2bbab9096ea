"""Faults of the data directory: a database another process holds, a database that is not ours or is
damaged, a backup taken while the bot writes, and a disk that fills up as an image is saved."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import settings
from bot.app import build_core
from core.db_file import BUSY_TIMEOUT_S
from core.errors import DISK_FULL
from core.store import Store
from testkit.bot_process import BotProcess, alive, small_config
from testkit.pool import ROOT, child_env
from tests.fakes.openai_server import FakeLLM
from tests.test_agent import RecordingReply, photo, turn

LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
conn.execute("INSERT INTO sessions (key, platform, created, updated, image_counter) VALUES ('held', 'x', 0, 0, 0)")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def _core(config: Path):
    return build_core(settings.load(config, env_check=False), llm_retries=0, status_interval=0)


@pytest.mark.slow
async def test_a_database_another_process_locks_for_10_s_makes_the_turn_wait_then_answer(tiny_dir, tmp_path):
    assert BUSY_TIMEOUT_S > 10
    async with FakeLLM() as llm:
        llm.on(user="hello").reply("Hello! What shall I draw?")
        core = _core(small_config(tmp_path, tiny_dir, llm.base_url))  # no pool: the turn needs none
        locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(tmp_path / "data" / "bot.db"), "10"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert locker.stdout.readline().strip() == "locked"
            started = time.monotonic()
            reply = RecordingReply()
            out = await core.handle(turn("hello", "discord:channel:7"), reply)
            waited = time.monotonic() - started
            assert locker.wait(15) == 0  # it committed: it really held the lock the whole time
        finally:
            if locker.poll() is None:
                locker.kill()
                locker.wait()
        await core.pool.close()
        await core.llm.close()
    assert reply.text == "Hello! What shall I draw?" and not out.error
    assert waited > 9, f"the turn did not wait for the lock ({waited:.1f} s)"
    said = [(m["role"], m["content"]) for m in core.store.messages("discord:channel:7")]
    assert said == [("user", "hello"), ("assistant", "Hello! What shall I draw?")]
    assert "held" in core.store.sessions()  # the other process's write is there too


def _foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("kind", ["corrupt", "foreign"])
async def test_a_corrupt_or_foreign_database_stops_the_start_naming_the_file_and_is_left_as_it_was(
        tiny_dir, tmp_path, kind):
    config = small_config(tmp_path, tiny_dir)
    db = tmp_path / "data" / "bot.db"
    db.parent.mkdir()
    if kind == "corrupt":
        db.write_bytes(b"SQLite format 3\0" + os.urandom(8000))  # a header, then garbage
    else:
        _foreign(db)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    async with BotProcess(config, "--terminal") as bot:
        code = await asyncio.wait_for(bot.proc.wait(), 60)
        out = (await bot.proc.stdout.read()).decode()
    err = bot.log.read_text()
    assert code == 2, err[-2000:]
    expected = {"corrupt": "cannot be read as the bot's session database",
                "foreign": "is an SQLite database, but not this bot's session database (it holds: users)"}[kind]
    assert f"data error: {db} {expected}" in err, err[-2000:]
    assert "The bot has not changed it." in err and "Traceback" not in err + out
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in db.parent.glob("bot.db*")) == ["bot.db"]  # no journal made beside it either
    assert not (db.parent / "pool.log").exists()  # nothing started


async def test_backup_while_the_bot_writes(tiny_dir, tmp_path):
    config = small_config(tmp_path, tiny_dir)
    core = _core(config)
    session = "discord:channel:3"
    uploaded = core.images.ingest(session, "house.jpg", photo().data)
    core.store.add_message(session, "user", "first words")
    stop, written = threading.Event(), []

    def keep_writing() -> None:  # the bot goes on writing while the backup runs
        while not stop.is_set():
            written.append(core.store.add_message(session, "user", f"more {len(written)}"))

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        dest = tmp_path / "backups" / "today"
        run = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "--config", str(config), "--backup", str(dest), cwd=ROOT, env=child_env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(run.communicate(), 60)
    finally:
        stop.set()
        writer.join()
    assert run.returncode == 0, err.decode()
    assert out.decode().startswith(f"backed up 1 conversation(s) to {dest / 'bot.db'} and 1 image file(s)")
    assert len(written) > 10  # the bot really wrote meanwhile, and goes on
    copy = Store(dest / "bot.db")  # opens as the bot's own database would
    said = [m["content"] for m in copy.messages(session)]
    assert said[0] == "first words" and said[1:] == [f"more {i}" for i in range(len(said) - 1)]  # a clean snapshot
    row = copy.image(session, uploaded.image_id)
    assert (dest / "images" / row.path).read_bytes() == core.images.path(uploaded).read_bytes()
    assert sqlite3.connect(dest / "bot.db").execute("PRAGMA integrity_check").fetchone() == ("ok",)
    await core.pool.close()


# --- a full disk --------------------------------------------------------------------------------------------
# The data directory is a small tmpfs and its images/ folder another, mounted in a user and mount namespace
# of the bot's own (unshare -Urm: no root needed); the test fills them through /proc/PID/root, so the bot's
# real save code gets real ENOSPC errors from the kernel.

MOUNT = ('mkdir -p "$1" && mount -t tmpfs -o size=16m tmpfs "$1" && mkdir "$1/images" && '
         'mount -t tmpfs -o size=256k tmpfs "$1/images" && shift && exec "$@"')


def _fill(folder: Path) -> Path:
    """Write a file in ``folder`` until its disk is full."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == 28, e  # ENOSPC
    return filler


class Terminal:
    """The bot's terminal chat: a line in, the bot's answer out."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc

    async def say(self, line: str, images: int = 0, timeout: float = 120) -> str:
        """What the terminal shows after ``line``: up to the answer and the ``images`` written with it."""
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        out, answered = "", False
        while not answered or out.count("  image ") < images:
            got = (await asyncio.wait_for(self.proc.stdout.readline(), timeout)).decode()
            assert got, f"the bot's output ended:\n{out}"
            out += got
            answered = answered or (got.startswith("bot: ") and got.strip() != "bot: ...")
        return out


async def test_a_full_disk_while_an_image_is_saved_says_so_and_keeps_the_conversation(tiny_dir, tmp_path):
    if shutil.which("unshare") is None:
        pytest.fail("this test needs util-linux's unshare (unprivileged user namespaces) to mount a small tmpfs")
    config = small_config(tmp_path, tiny_dir)  # no pool: saving an upload needs none (the tools save the same way)
    config.write_text(config.read_text().replace("[pool]\n", "[pool]\nstart = false\n", 1))
    data = tmp_path / "data"
    photos = []
    for i, sky in enumerate([(200, 40, 40), (40, 40, 200), (40, 200, 40), (10, 10, 10)]):
        photos.append(tmp_path / f"photo{i}.jpg")
        photos[-1].write_bytes(photo(sky).data)
    with (tmp_path / "bot.err").open("w") as err:
        bot = await asyncio.create_subprocess_exec(
            "unshare", "-Urm", "sh", "-c", MOUNT, "sh", str(data), sys.executable, "-m", "bot", "--config",
            str(config), "--terminal", cwd=ROOT, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=err)
    try:
        chat = Terminal(bot)
        await asyncio.wait_for(bot.stdout.readuntil(b"Type /help"), 60)
        inside = Path(f"/proc/{bot.pid}/root") / data.relative_to("/")  # the bot's view of its data dir
        assert "bot: Got img1." in await chat.say(f"/attach {photos[0]}")

        filler = _fill(inside / "images")  # the image disk is full; the database's still has room
        assert f"bot: {DISK_FULL}" in await chat.say(f"/attach {photos[1]}")
        assert not list((inside / "images").glob("*/*.tmp"))  # nothing half-written left behind

        filler.unlink()  # room again: the conversation goes on where it was
        assert "bot: Got img2." in await chat.say(f"/attach {photos[2]}")

        filler = _fill(inside)  # now the database's disk is full too: the file is written, its row is not
        assert f"bot: {DISK_FULL}" in await chat.say(f"/attach {photos[3]}")
        filler.unlink()
        assert "bot: Got img3." in await chat.say(f"/attach {photos[3]}")  # room again: it goes on
        assert alive(bot.pid)

        kept = tmp_path / "kept"  # what a restart would find: copied out of the bot's tmpfs
        shutil.copytree(inside, kept, ignore=shutil.ignore_patterns("*.sock"))
    finally:
        if bot.returncode is None:
            bot.kill()
        await bot.wait()
    store = Store(kept / "bot.db")  # opens (checked and migrated) as at the next start
    said = [(m["role"], m["content"]) for m in store.messages("terminal:local")]
    assert [s for s in said if s[0] == "user"] == [("user", f'[uploaded img{i} "photo{p}.jpg": 64x40]')
                                                  for i, p in ((1, 0), (2, 2), (3, 3))], said
    rows = store.images("terminal:local")
    assert [r.image_id for r in rows] == ["img1", "img2", "img3"]
    assert all((kept / "images" / r.path).is_file() for r in rows)
    assert not list((kept / "images").rglob("*.tmp"))
    assert sqlite3.connect(kept / "bot.db").execute("PRAGMA integrity_check").fetchone() == ("ok",)
