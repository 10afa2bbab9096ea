"""Which models are loaded where: load, unload, reload, and what each holds.

A load has two phases, both off the event loop: ``downloading`` (the model's
files from the hub into the cache, shared with other models reading the same
repo, see ``gpu_pool/fetch.py``) and ``loading`` (from the local files, on one
loading thread). A job for a model that is loading waits on the model's
``ready`` future and hears its progress; /models shows it too.

A reload releases the old copy first, then loads the new one, one model at a
time, so it never holds two copies (a /reload of everything would otherwise
need twice the memory): jobs already running finish on the old one, jobs that
arrive meanwhile wait for the new one.

On a device with a residency budget (``[residency]`` in config.toml) models
load onto their home (CPU RAM) and a :class:`Residency` per device moves
their weights onto the device per job (see ``gpu_pool/residency.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from collections.abc import Callable, Iterable

import torch

import settings
from gpu_pool import accounting, backend, faults, fast, fit, quantize
from gpu_pool import weights as w
from gpu_pool.backend import Refused
from gpu_pool.fetch import Download, Fetcher
from gpu_pool.load_crashes import LoadCrashes
from gpu_pool.models import MODEL_TABLE, load_sd_base, loader
from gpu_pool.models.base import LoadSpec, PoolModel, SharedBases
from gpu_pool.protocol import ModelInfo
from gpu_pool.residency import Residency
from settings.units import memory_size

log = logging.getLogger(__name__)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
LOAD_RATE = 300e6  # bytes/s a load is guessed to read until this pool has timed one


class NotLoaded(Refused):
    """The model is not available; the message names it and the cause, ``code`` says which (``Refused``)."""

    def __init__(self, message: str, code: str = "not_loaded", model: str | None = None):
        super().__init__(message, code, model)


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
    phase: str = "downloading"  # while loading: "downloading", then "loading"
    downloads: list[Download] = field(default_factory=list)
    load_bytes: int = 0  # weight bytes the loading phase reads
    load_started: float | None = None  # monotonic time the loading thread took it
    quantize: str = "none"  # what its config asks for: "none", "fp8", "nf4"
    quantized: str = "none"  # what the load used on its device (gpu_pool/quantize.py): "fp8 (torchao float8)" ...


class Registry:
    def __init__(self, config: settings.Config, crashes: LoadCrashes | None = None):
        self.config = config
        self.crashes = crashes  # models that took the pool down loading (the local pool only)
        self.entries: dict[str, Entry] = {}
        self.bases = SharedBases(load_sd_base)
        # One loading thread: from_pretrained builds modules under a process-wide meta-device
        # context, so two loads at once hand each other empty (meta) weights.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="load")
        self.residency: dict[str, Residency] = {}  # device -> its manager, for budgeted devices only
        self.fetcher = Fetcher()
        self._load_rate = LOAD_RATE  # bytes/s, timed on each load
        # the compile cache of the diffusion fast path, before anything compiles (gpu_pool/fast.py)
        self.compile_cache = fast.use_cache(config.storage.data_dir, config.pool.fast)

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
            raise _refused(backend.unknown_model(name, listing=False))
        entry = self.entries.get(name)
        if entry is None:  # never loaded, or unloaded (unload forgets the entry)
            raise _refused(backend.not_loaded(name))
        return entry

    async def get(self, name: str) -> PoolModel:
        """The loaded model, waiting while it loads; raises NotLoaded."""
        entry = self._entry(name)
        model = await asyncio.shield(entry.ready)
        entry.last_used = time.time()
        return model

    def progress(self, name: str) -> tuple[str, int, int, float | None]:
        """A loading model's (phase, bytes here, bytes in all, estimated seconds until ready)."""
        e = self.entries.get(name)
        if e is None or e.state != "loading":
            return "", 0, 0, None
        done, total = sum(d.done for d in e.downloads), sum(d.total for d in e.downloads)
        if e.phase == "downloading":
            # An estimate only once 5 % of what was missing arrived: before, the small config
            # files' round trips say nothing about the big weights' speed.
            fetched, missing = done - sum(d.cached for d in e.downloads), total - sum(d.cached for d in e.downloads)
            rate = sum(d.rate() for d in e.downloads)
            load = sum(d.loaded_bytes() for d in e.downloads) / self._load_rate
            eta = (total - done) / rate + load if rate > 0 and fetched >= 0.05 * missing else None
            return "downloading", done, total, eta
        eta = None
        if e.load_started is not None:  # not while it waits for the loading thread
            eta = max(1.0, e.load_bytes / self._load_rate - (time.monotonic() - e.load_started))
        return "loading", done, total, eta

    def infos(self) -> list[ModelInfo]:
        loaded = {n: list(e.model.modules().values()) for n, e in self.entries.items() if e.model is not None}
        sharing = accounting.sharing(loaded)
        return [self._info(name, *sharing.get(name, (0, 0, []))) for name in self.entries]

    def info(self, name: str) -> ModelInfo | None:
        """``name``'s listing without its memory figures (0): its state and progress, cheap enough for
        every request (the built-in LLM's); ``infos`` counts every loaded model's bytes."""
        return self._info(name, 0, 0, []) if name in self.entries else None

    def _info(self, name: str, own: int, shared: int, peers: list[str]) -> ModelInfo:
        e = self.entries[name]
        phase, done, total, eta = self.progress(name)
        dtype = e.dtype if e.quantized == "none" else f"{e.dtype}, {e.quantized}"
        return ModelInfo(name, e.device, dtype, e.source, e.state, own, shared, peers, e.error, e.last_used,
                         self.is_resident(name), phase, done, total, None if eta is None else round(eta, 1),
                         e.model.tokens_per_s() if e.model else None)

    # --- changes ------------------------------------------------------------

    def start_all(self) -> list[asyncio.Task]:
        """Begin loading every model the config names; returns the loading tasks (whose results are
        None: a task kept by the server must not keep a model alive after a reload)."""
        async def start(name: str) -> None:
            await self.load(name)

        starting = []
        for name in self.config.models:
            why = self.crashes.given_up(name) if self.crashes else None
            if why is None:
                starting.append(asyncio.create_task(start(name)))
            else:  # it crashed the pool at load, again and again: the others load, /models says why
                entry = self._begin(name)
                entry.state, entry.error = "failed", why
                _fail(entry.ready, NotLoaded(f"{name} is not loaded: it {why}.", "load_failed", name))
        return [*starting, asyncio.create_task(fit.log_fit(self.config, self.fetcher))]

    async def load(self, name: str, device: str | None = None, dtype: str | None = None) -> Entry:
        """Load (or reload) ``name``; ``device``/``dtype`` override the config until the next reload."""
        return await self._finish(self._begin(name, device, dtype))

    def start_load(self, name: str, device: str | None = None, dtype: str | None = None) -> asyncio.Task:
        """``load`` in a task, its entry (state "loading") there already when this returns: callers that
        check for the entry and start a load, without awaiting in between, never load a model twice."""
        return asyncio.create_task(self._finish(self._begin(name, device, dtype)), name=f"load-{name}")

    def _begin(self, name: str, device: str | None = None, dtype: str | None = None, release: bool = True) -> Entry:
        """A new loading entry for ``name`` in place of the old one, whose copy is released now
        (``release=False``: the caller releases, once for many)."""
        if name not in MODEL_TABLE:
            raise _refused(backend.unknown_model(name))
        cfg = self._config_of(name)
        cfg = dataclasses.replace(cfg, device=device or cfg.device, dtype=dtype or cfg.dtype)
        old = self.entries.get(name)
        loop = asyncio.get_running_loop()
        entry = Entry(name, settings.resolve_device(cfg.device), cfg.resolved_dtype(), cfg.source,
                      ready=loop.create_future(), last_used=old.last_used if old else None, quantize=cfg.quantize)
        self.entries[name] = entry
        if old is not None:
            if not old.ready.done():
                _chain(entry.ready, old.ready)  # jobs waiting on an unfinished load follow the new one
            old.model = None  # a job running on it keeps its own reference until it ends
            if release:
                self._release()
        return entry

    def _config_of(self, name: str) -> settings.ModelConfig:
        return self.config.models.get(name) or settings.ModelConfig(name, "auto", "auto",
                                                                    self.config.default_source(name))

    async def _finish(self, entry: Entry) -> Entry:
        """Download, then load, the model of a new entry."""
        name, dev, dt = entry.name, entry.device, entry.dtype
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        log.info("loading %s on %s (%s) from %s", name, dev, dt, entry.source or "(no weights)")
        try:
            _check_device(dev)
            wants = w.plan(name, entry.source, self.config.pool.sd_base)
            jobs = [self.fetcher.get(want, dt) for want in wants]
            entry.downloads = [d for d, _ in jobs]
            folders = {want.source: folder for want, folder in zip(wants, await asyncio.gather(*(t for _, t in jobs)))}
            if self.entries.get(name) is not entry:  # unloaded or replaced while downloading
                return entry
            mgr = self.manager(dev)
            spec = LoadSpec(name, folders.get(entry.source, entry.source), dev, DTYPES[dt],
                            folders.get(self.config.pool.sd_base, self.config.pool.sd_base), mgr.home if mgr else "",
                            self.config.limits.working_size, entry.quantize, self.config.limits.max_output_size,
                            fit.chat_tokens(self.config))
            # what the loading phase reads: not a shared base that is in memory already
            entry.load_bytes = sum(d.loaded_bytes() for d in entry.downloads
                                   if not self.bases.holds(d.folder, dev, DTYPES[dt]))
            entry.phase = "loading"
            model = await loop.run_in_executor(self._executor, _load_sync, spec, self.bases, mgr, entry, self.crashes,
                                               fast.settings(self.config.pool, dev, self.compile_cache))
        except Exception as e:
            log.error("loading %s failed:\n%s", name, traceback.format_exc())
            if self.entries.get(name) is entry:
                entry.state, entry.error = "failed", str(e) if isinstance(e, NotLoaded) else f"{type(e).__name__}: {e}"
            _fail(entry.ready, NotLoaded(f"{name} could not be loaded: {entry.error}", "load_failed", name))
            return entry
        self._time_load(entry)
        if self.entries.get(name) is not entry:  # unloaded or replaced while loading
            return entry
        entry.model, entry.state = model, "ready"
        if not entry.ready.done():
            entry.ready.set_result(model)
        self._release()  # a base nobody uses any more
        log.info("%s ready on %s in %.1f s", name, dev, time.perf_counter() - started)
        return entry

    def _time_load(self, entry: Entry) -> None:
        """Learn how fast this machine loads, for the next estimates."""
        if entry.load_started is None or entry.load_bytes < 50e6:  # small loads time the overhead, not the disk
            return
        seconds = max(0.1, time.monotonic() - entry.load_started)
        self._load_rate = (self._load_rate + entry.load_bytes / seconds) / 2

    async def unload(self, name: str) -> None:
        entry = self._entry(name)
        del self.entries[name]
        _fail(entry.ready, NotLoaded(f"{name} was unloaded by an admin.", model=name))
        entry.model = None  # a job running on it keeps its own reference until it ends
        self._release()
        log.info("unloaded %s", name)

    async def reload(self, name: str | None = None, where: Callable[[str], bool] | None = None) -> list[str]:
        """Re-read the config file, then reload ``name`` or every model, one at a time; returns the names.
        ``where``: which of them to reload (a Ray replica: those it holds, ``placement.reloads_here``).

        Every old copy is released before the first new one loads (a single model's before it loads):
        reloading never holds two copies of a model, nor two shared bases.
        """
        self.config = settings.reload(self.config)  # the same --load, if the pool was started with one
        if name is None:
            for gone in [n for n in self.entries if n not in self.config.models]:
                await self.unload(gone)
            names = list(self.config.models)
        else:
            names = [name]
        names = [n for n in names if where is None or where(n)]
        entries = [self._begin(n, release=False) for n in names]
        if name is None:
            self.bases = SharedBases(load_sd_base)  # pick up a changed sd_base; the old one goes now
            for mgr in self.residency.values():  # and a changed [residency]: the old models leave the device
                mgr.forget(set())  # (but for those running a job, which go with their model)
            self.residency = {}
        self._release()
        for entry in entries:
            await self._finish(entry)
        return names

    def _release(self) -> None:
        """Forget what no model holds any more, and give the memory back (emptying the CUDA cache).

        Bases stay while a load runs: a loader may be building on one no finished model holds yet.
        """
        in_use = {id(m) for e in self.entries.values() if e.model is not None for m in e.model.modules().values()}
        if any(e.state == "loading" for e in self.entries.values()):
            in_use |= self.bases.module_ids()
        else:
            self.bases.drop_unused(in_use)
        for mgr in self.residency.values():
            mgr.forget(in_use)
        free_memory()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _load_sync(spec: LoadSpec, bases: SharedBases, mgr: Residency | None, entry: Entry,
               crashes: LoadCrashes | None = None, speed: fast.Fast | None = None) -> PoolModel:
    """On the loading thread: load, quantize, the fast path (``speed``; it makes new weights), then hand the
    weights to the device's manager (pinning them), which so counts the bytes the quantized weights hold;
    last, with the entry still "loading", the fast path's warm-up (on the device under a budget)."""
    entry.load_started = time.monotonic()
    with crashes.loading_of(spec.name) if crashes else contextlib.nullcontext():  # a crashing compile too
        faults.on_load(spec.name)
        model = loader(spec.name)(spec, bases)
        entry.quantized = quantize.apply(spec.name, spec.quantize, model.quantizable(), spec.device, spec.dtype)
        applied = fast.apply(model, speed.step_cache) if speed else []
        if applied:
            log.info("%s: fast path: %s", spec.name, ", ".join(applied))
        if mgr is not None:
            mgr.adopt(model.modules().values())
            need = mgr.bytes_of(model.modules().values()) + model.working_bytes()
            if need > mgr.limit:  # its jobs will fail and say why
                log.warning("%s needs %s, more than the %s budget of %s", spec.name, memory_size(need),
                            memory_size(mgr.limit), spec.device)
        if applied and speed.warmup_sizes:
            fast.warm_up(model, speed.warmup_sizes, mgr, speed.cache)
    faults.arm(model)  # after the warm-up, which is not one of the jobs it counts
    return model


def _refused(r: Refused) -> NotLoaded:
    return NotLoaded(str(r), r.code, r.model)


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
    if why := fit.device_problem(device):
        raise NotLoaded(why)


def free_memory() -> None:
    """Give back what dropped models held (and, on CUDA, the allocator's cache)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

