"""Start the pool as a child process, and start it again if it dies.

Only for a pool the bot started itself (``pool.start = true``); a pool
someone else runs is only connected to. The child is told the bot's pid
(``GPU_POOL_PARENT_PID``) and exits by itself when the bot dies, even by SIGKILL
(see ``gpu_pool/__main__.py``): never an orphan holding GPU memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path

from core.pool_client import PoolClient

log = logging.getLogger(__name__)
START_TRIES = 5  # a model that crashes the pool at load is left out after 3 crashes: the 4th start works
STABLE_S = 60.0  # a pool up this long before it died starts the backoff over
CONFIG_ERROR = 2  # python -m gpu_pool's exit code for a config error: starting again would not help


def backoff(crashes: int) -> float:
    """Seconds before starting the pool again after ``crashes`` crashes in a row: 0.5, 1, 2, 4, 8, 8 ..."""
    return min(8.0, 2 ** min(crashes, 5) / 4)


class PoolExited(RuntimeError):
    """The pool exited while starting."""

    def __init__(self, code: int):
        super().__init__(f"the pool exited with code {code} while starting; see its log")
        self.code = code


class PoolProcess:
    def __init__(self, config_path: Path, url: str, startup_timeout: float = 600, cwd: Path | None = None,
                 log_file: Path | None = None, load: str = ""):
        self.config_path, self.url, self.startup_timeout = Path(config_path), url, startup_timeout
        self.load = load  # the bot's --load "Name_device,...": the pool loads the same models
        self.log_file = log_file  # the pool's output goes here (appended) instead of the bot's terminal
        self.cwd = cwd or Path(__file__).resolve().parent.parent
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._watch: asyncio.Task | None = None
        self._stopping = False

    async def start(self) -> None:
        """Start the pool and wait until it answers (models may still be loading). A pool that dies while
        starting is started again, with a backoff, up to ``START_TRIES`` times: a model that crashes the
        pool as it loads is left out by the pool after three crashes (gpu_pool/load_crashes.py)."""
        for attempt in range(1, START_TRIES + 1):
            self.proc = await self._spawn()
            log.info("started the pool (pid %s)", self.proc.pid)
            try:
                await self.wait_healthy()
                break
            except PoolExited as e:
                if e.code == CONFIG_ERROR or attempt == START_TRIES:
                    raise
                delay = backoff(attempt)
                log.error("%s; starting it again in %g s (try %d of %d)", e, delay, attempt + 1, START_TRIES)
                await asyncio.sleep(delay)
        if self._watch is None:
            self._watch = asyncio.create_task(self._watchdog(), name="pool-watchdog")

    async def _spawn(self) -> asyncio.subprocess.Process:
        env = dict(os.environ, GPU_POOL_PARENT_PID=str(os.getpid()))
        out = open(self.log_file, "ab") if self.log_file else None  # the child keeps its own copy
        try:
            # its own session: a Ctrl-C in the terminal reaches the bot only, which stops the pool when
            # its turns in flight are answered (the pool still dies with the bot: see gpu_pool/__main__.py)
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gpu_pool", "--config", str(self.config_path),
                *(["--load", self.load] if self.load else []), cwd=self.cwd, env=env,
                start_new_session=True, stdout=out, stderr=asyncio.subprocess.STDOUT if out else None)
        finally:
            if out:
                out.close()

    async def wait_healthy(self) -> None:
        client = PoolClient(self.url)
        deadline = time.monotonic() + self.startup_timeout
        try:
            while not await client.health():
                if self.proc and self.proc.returncode is not None:
                    raise PoolExited(self.proc.returncode)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the pool did not answer within {self.startup_timeout:g} s")
                await asyncio.sleep(0.2)
        finally:
            await client.close()

    async def _watchdog(self) -> None:
        streak = 0  # crashes since the pool last stayed up STABLE_S: the backoff grows with them
        while not self._stopping:
            up = time.monotonic()
            code = await self.proc.wait()
            if self._stopping:
                return
            self.restarts += 1
            streak = 1 if time.monotonic() - up >= STABLE_S else streak + 1
            delay = backoff(streak)
            log.error("the pool exited (code %s); starting it again in %g s (restart %d)", code, delay, self.restarts)
            await asyncio.sleep(delay)
            try:
                self.proc = await self._spawn()
                await self.wait_healthy()
                log.info("the pool is back (pid %s)", self.proc.pid)
            except Exception:
                log.exception("restarting the pool failed")

    async def stop(self) -> None:
        self._stopping = True
        if self._watch:
            self._watch.cancel()
        if self.proc and self.proc.returncode is None:
            started = time.monotonic()
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                log.warning("the pool did not stop in 10 s; killing it")
                self.proc.kill()
                await self.proc.wait()
            log.info("the pool stopped (pid %s) in %.1f s", self.proc.pid, time.monotonic() - started)
