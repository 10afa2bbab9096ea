"""``python -m bot`` as a user starts it, in a subprocess; what tests and benches read of it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from testkit.pool import ROOT, child_env


def small_config(folder: Path, tiny: Path, llm_url: str = "http://127.0.0.1:9/v1", extra: str = "") -> Path:
    """A bot config with two tiny models and the safety checker: fast to start, enough for a conversation."""
    path = folder / "config.toml"
    path.write_text(extra + f"""
[llm]
base_url = "{llm_url}"
model = "fake-model"
timeout_s = 20

[pool]
socket = "pool.sock"
sd_base = "{tiny}/sd15"

[storage]
data_dir = "data"

[limits]
working_size = 64
max_steps = 10

[models.ImageCaptioning]
device = "cpu"
source = "{tiny}/blip-caption"

[models.Text2Image]
device = "cpu"
source = "{tiny}/sd15"

[models.SafetyChecker]
device = "cpu"
source = "{tiny}/safety-flags-none"
""")
    return path


class BotProcess:
    """``python -m bot`` as a user starts it; its log in a file, to find the pool's pid. Leaving the
    ``async with`` kills the bot and its pool by pid, whatever happened. ``discord``: the URL of a fake Discord
    (tests/fakes/discord_server.py) for discord.py to use (testkit/on_fake_discord.py)."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None, discord: str = ""):
        self.config, self.args, self.log = config, args, config.parent / "bot.log"
        self.module = ("testkit.on_fake_discord", discord) if discord else ("bot",)
        self.env = child_env(**(env or {}))
        self.proc: asyncio.subprocess.Process | None = None
        self._pool: int | None = None

    async def __aenter__(self) -> BotProcess:
        with self.log.open("w") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", *self.module, "--config", str(self.config), *self.args, cwd=ROOT, env=self.env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        return self

    async def __aexit__(self, *_) -> None:
        pool = self.pool_pid(wait=0)
        for pid in (self.proc.pid, pool):
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)
        await self.proc.wait()

    def pool_pid(self, wait: float = 120) -> int | None:
        """The pid of the pool this bot started (its child running gpu_pool), waiting up to ``wait``
        seconds; remembered, so it can be killed after the bot is gone."""
        deadline = time.monotonic() + wait
        while self._pool is None:
            self._pool = child_running(self.proc.pid, "gpu_pool")
            if self._pool is not None or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        return self._pool

    async def read_until(self, text: str, timeout: float = 180) -> str:
        """Standard output up to and including ``text``."""
        return (await asyncio.wait_for(self.proc.stdout.readuntil(text.encode()), timeout)).decode()


def child_running(parent: int, module: str) -> int | None:
    """A child process of ``parent`` whose command line runs ``python -m module``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmd = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if ppid == parent and module.encode() in cmd:
            return int(stat.parent.name)
    return None


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return not alive(pid)
