"""Shared fixtures: tiny models, test configs, no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # any accidental hub access fails fast
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from testkit.core import close_core, make_core  # noqa: E402
from testkit.pool import start_pool, stop_pool, tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """Folder with tiny random-weight versions of every seed model (built once)."""
    return tiny_models()


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


def loaded_by_dtype(tiny_dir, sources: dict[str, str]):
    """load(name, dtype=float32) -> pool model ``name`` from the tiny folder ``sources[name]`` on the CPU in
    ``dtype``, loaded the first time, the same object after that (a module-scoped ``load`` fixture returns this)."""
    import torch

    from gpu_pool.models import loader
    from gpu_pool.models.base import LoadSpec

    loaded = {}

    def get(name: str, dtype=torch.float32):
        if (name, dtype) not in loaded:
            spec = LoadSpec(name, str(tiny_dir / sources[name]), "cpu", dtype, sd_base="")
            loaded[name, dtype] = loader(name)(spec, None)
        return loaded[name, dtype]

    return get


def boxed_picture():
    """A 96x64 blue picture with a yellow box in it: something for the models that see to find."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (96, 64), (40, 100, 170))
    ImageDraw.Draw(img).rectangle((20, 10, 60, 50), fill=(230, 200, 40))
    return img


def run_to_the_end(model, params: dict, image):
    """``model`` run on ``image`` with ``params`` (checked), asserting its progress reached the last step."""
    from gpu_pool.models.base import check_params

    steps: list[tuple[int, int]] = []
    out = model.run(check_params(model, params, {}), [image], lambda i, n: steps.append((i, n)))
    assert steps and steps[-1][0] == steps[-1][1], "the last progress report is the final step"
    return out


# --- a real pool process -------------------------------------------------------


@pytest.fixture(scope="session")
def pool(tiny_dir, tmp_path_factory):
    """One pool process with every tiny model, shared by the tests that need it."""
    p = start_pool(tmp_path_factory.mktemp("pool"))
    yield p
    stop_pool(p)


# The session pool holds both profiles' tiny models, and each tool picks the modern model while it is loaded.
# A test that uses the pool gets the seed's profile (the modern models unloaded) unless its module is one of
# these, which get every model; the pool switches only where the next test's module wants the other.
EVERY_MODEL = {"test_pool", "test_tools_modern", "test_e2e_modern"}
_modern_loaded = [True]  # as the pool starts


@pytest.fixture(autouse=True)
def profile(request):
    """The seed's profile, or every model (``EVERY_MODEL``), on the session pool for this test."""
    if "pool" in request.fixturenames:
        want = request.module.__name__.rsplit(".", 1)[-1] in EVERY_MODEL
        if _modern_loaded[0] != want:
            import settings
            from testkit.pool import hold

            hold(request.getfixturevalue("pool"), settings.models.MODERN_DEFAULTS, want)
            _modern_loaded[0] = want
    yield


# --- a core wired to the pool and a scripted LLM ------------------------------------


@pytest.fixture
async def llm_server():
    from tests.fakes.openai_server import FakeLLM

    async with FakeLLM() as server:
        yield server


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
