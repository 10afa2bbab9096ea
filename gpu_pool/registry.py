"""Which models are loaded where: load, unload, reload, and what each holds.

Loading runs on its own thread so the event loop keeps serving; a job
for a model that is loading waits on the model's ``ready`` future. A reload
builds the new model first and swaps it in: jobs already running finish on
the old one, jobs that arrive meanwhile wait for the new one.

On a device with a residency budget (``[residency]`` in config.toml) models
load onto their home (CPU RAM) and a :class:`Residency` per device moves
their weights onto the device per job (see ``gpu_pool/residency.py``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable

import torch

import settings
from gpu_pool import accounting
from gpu_pool.models import MODEL_TABLE, load_sd_base, loader
from gpu_pool.models.base import LoadSpec, PoolModel, SharedBases
from gpu_pool.protocol import ModelInfo
from gpu_pool.residency import Residency, size_text

log = logging.getLogger(__name__)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class NotLoaded(Exception):
    """The model is not available; the message is meant for the chat user."""


@dataclass
class Entry:
    name: str
    device: str
    dtype: str
    source: str
    state: str = "loading"
    model: PoolModel | None = None
    error: str | None = None
    last_used: float | None = None
    ready: asyncio.Future = field(default=None)  # resolves to the PoolModel, or raises NotLoaded


class Registry:
    def __init__(self, config: settings.Config):
        self.config = config
        self.entries: dict[str, Entry] = {}
        self.bases = SharedBases(load_sd_base)
        # One loading thread: from_pretrained builds modules under a process-wide meta-device
        # context, so two loads at once hand each other empty (meta) weights.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="load")
        self.residency: dict[str, Residency] = {}  # device -> its manager, for budgeted devices only

    # --- queries ------------------------------------------------------------

    def manager(self, device: str) -> Residency | None:
        """The residency manager of ``device``; None when the device has no budget."""
        cfg = self.config.residency
        if device not in self.residency and cfg.applies_to(device):
            self.residency[device] = Residency(device, cfg.budget, cfg.reserve, home="cpu")
        return self.residency.get(device)

    def is_resident(self, name: str) -> bool:
        """Loaded, with every weight on its device (always, on a device without a budget)."""
        entry = self.entries.get(name)
        if entry is None or entry.model is None or entry.state != "ready":
            return False
        mgr = self.manager(entry.device)
        return mgr is None or mgr.is_resident(entry.model.modules().values())

    def modules_of(self, names: Iterable[str]) -> list[torch.nn.Module]:
        """The modules of the loaded models among ``names``."""
        return [m for n in dict.fromkeys(names) if (e := self.entries.get(n)) and e.model
                for m in e.model.modules().values()]

    def device_of(self, name: str) -> str:
        return self._entry(name).device

    def _entry(self, name: str) -> Entry:
        if name not in MODEL_TABLE:
            raise NotLoaded(f"There is no model called {name}.")
        entry = self.entries.get(name)
        if entry is None:  # never loaded, or unloaded (unload forgets the entry)
            raise NotLoaded(f"{name} is not loaded on this bot; an admin can load it with /load {name}.")
        return entry

    async def get(self, name: str) -> PoolModel:
        """The loaded model, waiting while it loads; raises NotLoaded."""
        entry = self._entry(name)
        model = await asyncio.shield(entry.ready)
        entry.last_used = time.time()
        return model

    def infos(self) -> list[ModelInfo]:
        loaded = {n: list(e.model.modules().values()) for n, e in self.entries.items() if e.model is not None}
        sharing = accounting.sharing(loaded)
        out = []
        for name, e in self.entries.items():
            own, shared, peers = sharing.get(name, (0, 0, []))
            out.append(ModelInfo(name, e.device, e.dtype, e.source, e.state, own, shared, peers, e.error, e.last_used,
                                 self.is_resident(name)))
        return out

    # --- changes ------------------------------------------------------------

    def start_all(self) -> list[asyncio.Task]:
        """Begin loading every model the config names; returns the loading tasks."""
        return [asyncio.create_task(self.load(name)) for name in self.config.models]

    async def load(self, name: str, device: str | None = None, dtype: str | None = None) -> Entry:
        """Load (or reload) ``name``; ``device``/``dtype`` override the config until the next reload."""
        if name not in MODEL_TABLE:
            raise NotLoaded(f"There is no model called {name}. Known models: {', '.join(MODEL_TABLE)}.")
        cfg = self.config.models.get(name) or settings.ModelConfig(name, "auto", "auto", settings.MODEL_DEFAULTS[name])
        cfg = settings.ModelConfig(name, device or cfg.device, dtype or cfg.dtype, cfg.source)
        dev, dt = settings.resolve_device(cfg.device), cfg.resolved_dtype()
        old = self.entries.get(name)
        loop = asyncio.get_running_loop()
        entry = Entry(name, dev, dt, cfg.source, ready=loop.create_future(), last_used=old.last_used if old else None)
        self.entries[name] = entry
        if old is not None and not old.ready.done():
            _chain(entry.ready, old.ready)  # jobs waiting on an unfinished load follow the new one
        mgr = self.manager(dev)
        spec = LoadSpec(name, cfg.source, dev, DTYPES[dt], self.config.pool.sd_base, mgr.home if mgr else "")
        started = time.perf_counter()
        log.info("loading %s on %s (%s) from %s", name, dev, dt, cfg.source or "(no weights)")
        try:
            _check_device(dev)
            model = await loop.run_in_executor(self._executor, _load_sync, spec, self.bases, mgr)
        except Exception as e:
            log.error("loading %s failed:\n%s", name, traceback.format_exc())
            if self.entries.get(name) is entry:
                entry.state, entry.error = "failed", str(e) if isinstance(e, NotLoaded) else f"{type(e).__name__}: {e}"
            _fail(entry.ready, NotLoaded(f"{name} could not be loaded: {entry.error}"))
            return entry
        if self.entries.get(name) is not entry:  # unloaded or replaced while loading
            return entry
        entry.model, entry.state = model, "ready"
        if not entry.ready.done():
            entry.ready.set_result(model)
        self._release()  # a reload's old copy, and a base nobody uses any more
        log.info("%s ready on %s in %.1f s", name, dev, time.perf_counter() - started)
        return entry

    async def unload(self, name: str) -> None:
        entry = self._entry(name)
        del self.entries[name]
        _fail(entry.ready, NotLoaded(f"{name} was unloaded by an admin."))
        entry.model = None  # a job running on it keeps its own reference until it ends
        self._release()
        log.info("unloaded %s", name)

    async def reload(self, name: str | None = None) -> list[str]:
        """Re-read the config file, then reload ``name`` or every model; returns the names reloaded."""
        self.config = settings.load(self.config.path, env_check=False)
        if name is None:
            self.bases = SharedBases(load_sd_base)  # pick up a changed sd_base
            for mgr in self.residency.values():  # and a changed [residency]: the old models leave the device
                mgr.forget(set())  # (but for those running a job, which go with their model)
            self.residency = {}
            for gone in [n for n in self.entries if n not in self.config.models]:
                await self.unload(gone)
            names = list(self.config.models)
        else:
            names = [name]
        await asyncio.gather(*(self.load(n) for n in names))
        self._release()
        return names

    def _release(self) -> None:
        """Forget bases no loaded model uses, and give memory back; never while a load runs,
        because a loader may be building on a base no finished model holds yet."""
        if any(e.state == "loading" for e in self.entries.values()):
            return
        in_use = {id(m) for e in self.entries.values() if e.model is not None for m in e.model.modules().values()}
        self.bases.drop_unused(in_use)
        for mgr in self.residency.values():
            mgr.forget(in_use)
        free_memory()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _load_sync(spec: LoadSpec, bases: SharedBases, mgr: Residency | None) -> PoolModel:
    """On the loading thread: load, then hand the weights to the device's manager (pinning them)."""
    model = loader(spec.name)(spec, bases)
    if mgr is not None:
        mgr.adopt(model.modules().values())
        if (need := mgr.bytes_of(model.modules().values())) > mgr.limit:  # its jobs will fail and say why
            log.warning("%s needs %s, more than the %s budget of %s", spec.name, size_text(need),
                        size_text(mgr.limit), spec.device)
    return model


def _chain(new: asyncio.Future, old: asyncio.Future) -> None:
    def copy(f: asyncio.Future) -> None:
        if old.done():
            return
        if f.exception() is not None:
            old.set_exception(f.exception())
        else:
            old.set_result(f.result())

    new.add_done_callback(copy)


def _fail(fut: asyncio.Future, exc: Exception) -> None:
    if not fut.done():
        fut.set_exception(exc)
        fut.exception()  # retrieved: nobody may be waiting, and that is fine


def _check_device(device: str) -> None:
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        count = torch.cuda.device_count()
        if index >= count:
            raise NotLoaded(f"{device} does not exist on the pool's machine ({count} GPU(s) found).")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise NotLoaded("mps is not available on the pool's machine.")


def free_memory() -> None:
    """Give back what dropped models held (and, on CUDA, the allocator's cache)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

