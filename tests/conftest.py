"""Shared fixtures: tiny models, test configs, no network."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # any accidental hub access fails fast
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import settings  # noqa: E402
from core.pool_client import PoolClient  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """Folder with tiny random-weight versions of every seed model (built once)."""
    from scripts.build_tiny_models import ensure

    return ensure()


def write_tiny_config(folder: Path, extra: str = "") -> Path:
    """A copy of tests/config.tiny.toml in ``folder`` (its own socket and data dir) plus ``extra`` TOML."""
    text = (ROOT / "tests" / "config.tiny.toml").read_text()
    text = text.replace('"../build/tiny-models', f'"{ROOT}/build/tiny-models')
    text = text.replace('data_dir = "../data/tiny"', 'data_dir = "data"')
    path = folder / "config.toml"
    path.write_text(text + "\n" + extra)
    return path


# --- pool models in this process (no pool) ----------------------------------------


@pytest.fixture(scope="module")
def bases():
    """The shared SD bases of one test module's pool models."""
    from gpu_pool.models import load_sd_base
    from gpu_pool.models.base import SharedBases

    return SharedBases(load_sd_base)


def loaded_once(make_spec, bases):
    """load(name) -> pool model ``name``, loaded by its loader from ``make_spec(name)`` on ``bases`` the
    first time, the same object after that (a module-scoped ``load`` fixture returns this)."""
    from gpu_pool.models import loader

    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = loader(name)(make_spec(name), bases)
        return cache[name]

    return get


# --- a real pool process -------------------------------------------------------


def ray_on_cpu(object_store: str = "100MiB") -> str:
    """The ``[pool.ray]`` section of a local Ray cluster on this machine's CPUs: two replicas, one CPU each."""
    return (f'[pool.ray]\nreplicas = 2\ngpus_per_replica = 0\ncpus_per_replica = 1\nspread_after = 2\nnum_cpus = 2\n'
            f'object_store_memory = "{object_store}"\n')


class Pool:
    def __init__(self, config: Path, proc: subprocess.Popen, log: Path):
        self.config, self.proc, self.log = config, proc, log
        self.url = settings.load(config, env_check=False).pool.url

    def client(self) -> PoolClient:
        return PoolClient(self.url)


async def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    client = PoolClient(url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"pool exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            if await client.health():
                states = {m.name: m.state for m in await client.models()}
                if states and "loading" not in states.values():
                    failed = {n: s for n, s in states.items() if s != "ready"}
                    assert not failed, f"models failed to load: {failed}\n{log.read_text()[-5000:]}"
                    return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"pool not ready in {timeout} s:\n{log.read_text()[-3000:]}")
    finally:
        await client.close()


def start_pool(folder: Path, extra: str = "") -> Pool:
    """A pool process with every tiny model (tests/config.tiny.toml plus ``extra``), ready."""
    return start_pool_with(write_tiny_config(folder, extra))


def spawn_pool(config: Path, *args: str, env: dict[str, str] | None = None,
               group: bool = False) -> subprocess.Popen:
    """``python -m gpu_pool --config CONFIG ARGS``, its output in pool.log beside the config. ``env``: instead
    of this process's, offline, with the project on the path; ``group``: in a process group of its own,
    which Ray's processes join (``kill_group`` ends what is left of them)."""
    if env is None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with (config.parent / "pool.log").open("w") as out:  # the child keeps its own copy of the handle
        return subprocess.Popen([sys.executable, "-m", "gpu_pool", "--config", str(config), *args], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=group)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL whatever is left in the process group ``spawn_pool(group=True)`` started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start_pool_with(config: Path) -> Pool:
    """A pool process for ``config``, once every model it names is ready; its log beside the config."""
    log = config.parent / "pool.log"
    proc = spawn_pool(config)
    pool = Pool(config, proc, log)
    try:
        asyncio.run(_wait_ready(pool.url, proc, log))
    except BaseException:
        proc.kill()
        raise
    return pool


def stop_pool(pool: Pool) -> None:
    pool.proc.terminate()
    try:
        pool.proc.wait(10)
    except subprocess.TimeoutExpired:
        pool.proc.kill()


@pytest.fixture(scope="session")
def pool(tiny_dir, tmp_path_factory):
    """One pool process with every tiny model, shared by the tests that need it."""
    p = start_pool(tmp_path_factory.mktemp("pool"))
    yield p
    stop_pool(p)


# --- a core wired to the pool and a scripted LLM ------------------------------------


@pytest.fixture
async def llm_server():
    from tests.fakes.openai_server import FakeLLM

    async with FakeLLM() as server:
        yield server


def make_core(pool: Pool, tmp_path: Path, llm_server, **llm_overrides):
    """The real Core on the test pool, its LLM the scripted server, its data in ``tmp_path``."""
    import dataclasses

    from core.engine import Core
    from core.images import ImageStore
    from core.llm import LLM
    from core.store import Store

    cfg = settings.load(pool.config, env_check=False)
    llm_cfg = dataclasses.replace(cfg.llm, base_url=llm_server.base_url, **llm_overrides)
    cfg = dataclasses.replace(cfg, llm=llm_cfg, storage=settings.StorageConfig(tmp_path / "data"))
    store = Store(tmp_path / "data" / "bot.db")
    lim = cfg.limits
    images = ImageStore(tmp_path / "data" / "images", store, max_pixels=lim.max_image_pixels,
                        max_bytes=lim.max_upload_bytes, working_size=lim.working_size)
    return Core(cfg, store, images, PoolClient(cfg.pool.url), LLM(cfg.llm, max_retries=0), status_interval=0)


async def close_core(core) -> None:
    """Close what a core from ``make_core`` holds open: its pool and LLM clients."""
    await core.pool.close()
    await core.llm.close()


@pytest.fixture
async def core(pool, tmp_path, llm_server):
    c = make_core(pool, tmp_path, llm_server)
    yield c
    await close_core(c)


class RestartingBots:
    """Starts a chat bot, and restarts it: each start a new Core and bot over the same data directory.
    A platform's subclass builds its bot (``make_bot``)."""

    def __init__(self, pool, tmp_path, llm_server):
        self.args, self.core, self.bot = (pool, tmp_path, llm_server), None, None

    def make_bot(self, core):
        raise NotImplementedError

    async def start(self):
        await self.stop()
        self.core = make_core(*self.args)
        self.bot = self.make_bot(self.core)
        await self.bot.start()
        return self.bot

    async def stop(self) -> None:
        if self.bot is not None:
            await self.bot.idle()
            await self.bot.close()
            await close_core(self.core)
            self.bot = None
