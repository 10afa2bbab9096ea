"""A pool process over the tiny models (build/tiny-models), as tests and benches start it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import settings
from core.pool_client import PoolClient

ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = ROOT / "tests" / "config.tiny.toml"


def tiny_models() -> Path:
    """The folder with tiny random-weight versions of every seed model (built the first time)."""
    from scripts.build_tiny_models import ensure

    return ensure()


def tiny_config_text() -> str:
    """tests/config.tiny.toml with absolute model paths and a data dir beside the config."""
    text = TINY_CONFIG.read_text().replace('"../build/tiny-models', f'"{ROOT}/build/tiny-models')
    return text.replace('data_dir = "../data/tiny"', 'data_dir = "data"')


def write_tiny_config(folder: Path, extra: str = "", *, backend: str = "") -> Path:
    """A copy of tests/config.tiny.toml in ``folder`` (its own socket and data dir) plus ``extra`` TOML;
    ``backend``: the pool's ``[pool] backend`` (e.g. "ray"), the default when empty."""
    text = tiny_config_text()
    if backend:
        text = text.replace("[pool]\n", f'[pool]\nbackend = "{backend}"\n', 1)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    path.write_text(text + "\n" + extra)
    return path


def ray_on_cpu(object_store: str = "100MiB") -> str:
    """The ``[pool.ray]`` section of a local Ray cluster on this machine's CPUs: two replicas, one CPU each."""
    return (f'[pool.ray]\nreplicas = 2\ngpus_per_replica = 0\ncpus_per_replica = 1\nspread_after = 2\nnum_cpus = 2\n'
            f'object_store_memory = "{object_store}"\n')


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child: offline, with the project on the path."""
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)


class Pool:
    """A pool process started by ``start_pool_with``; ``group``: in a process group of its own."""

    def __init__(self, config: Path, proc: subprocess.Popen, log: Path, group: bool = False):
        self.config, self.proc, self.log, self.group = config, proc, log, group
        self.url = settings.load(config, env_check=False).pool.url

    def client(self) -> PoolClient:
        return PoolClient(self.url)

    async def ready(self, timeout: float = 180) -> None:
        """Until every model is ready (``wait_ready``)."""
        await wait_ready(self.url, self.proc, self.log, timeout)


async def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Until every model the pool at ``url`` names is ready; fails when one failed or the process exited."""
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


def spawn_pool(config: Path, *args: str, env: dict[str, str] | None = None,
               group: bool = False) -> subprocess.Popen:
    """``python -m gpu_pool --config CONFIG ARGS``, its output in pool.log beside the config, stopping by
    itself when this process dies (as under the bot). ``env``: instead of ``child_env()``; ``group``: in a
    process group of its own, which Ray's processes join (``kill_group`` ends what is left of them)."""
    env = child_env() if env is None else env
    env.setdefault("GPU_POOL_PARENT_PID", str(os.getpid()))  # gpu_pool/__main__.py's PARENT_ENV
    with (config.parent / "pool.log").open("w") as out:  # the child keeps its own copy of the handle
        return subprocess.Popen([sys.executable, "-m", "gpu_pool", "--config", str(config), *args], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=group)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL whatever is left in the process group ``spawn_pool(group=True)`` started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def launch_pool(config: Path, *args: str, group: bool = False) -> Pool:
    """A pool process for ``config`` (``spawn_pool``), not waited for: ``pool.ready()`` does that."""
    return Pool(config, spawn_pool(config, *args, group=group), config.parent / "pool.log", group)


def start_pool_with(config: Path, *args: str, group: bool = False, timeout: float = 180) -> Pool:
    """A pool process for ``config``, once every model it names is ready; its log beside the config."""
    pool = launch_pool(config, *args, group=group)
    try:
        asyncio.run(pool.ready(timeout))
    except BaseException:
        stop_pool(pool, 0)
        raise
    return pool


def start_pool(folder: Path, extra: str = "") -> Pool:
    """A pool process with every tiny model (tests/config.tiny.toml plus ``extra``), ready."""
    return start_pool_with(write_tiny_config(folder, extra))


def hold(pool: Pool, names: Iterable[str], loaded: bool) -> None:
    """Load (on the CPU) or unload the models ``names`` in ``pool``; loaded: until every model is ready.
    A pool with both profiles' tiny models runs the seed's profile with the modern models unloaded, since each
    tool picks the modern model while it is loaded (tests/conftest.py's ``profile``)."""

    async def each() -> None:
        client = pool.client()
        try:
            for name in names:
                await (client.load(name, device="cpu") if loaded else client.unload(name))
        finally:
            await client.close()

    asyncio.run(each())
    if loaded:
        asyncio.run(pool.ready())


def stop_pool(pool: Pool, timeout: float = 10) -> None:
    """SIGTERM, SIGKILL after ``timeout`` seconds; for a pool in a process group of its own, then whatever
    is left in that group (Ray's processes)."""
    pool.proc.terminate()
    try:
        pool.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pool.proc.kill()
        pool.proc.wait()
    if pool.group:
        kill_group(pool.proc)
