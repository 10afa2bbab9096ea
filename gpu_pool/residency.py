"""Which weights are on a device, under a byte budget: InvokeAI's model cache, per component.

    home (CPU RAM, pinned)  ── make_resident: copy, non_blocking ──▶  device (budget - reserve)
                            ◀── evict: least recently used, unlocked ──

- A *component* is one torch module (a UNet, a VAE, a ControlNet); a model is
  the components it runs on. The SD base is the same module objects under
  every pipeline, so it is moved once, and bytes are counted per storage
  (``gpu_pool.accounting``), so it is counted once.
- Home tensors are kept for good: moving in copies home -> device; evicting
  points the module back at its home tensors. No copy back: inference never
  writes weights, and the pinned home stays pinned.
- A job may hold memory besides its weights while it runs (the LLM's KV
  cache, ``PoolModel.working_bytes``): counted with the weights until the job
  ends, so the budget makes room for it as for a model.
- Eviction: least recently used first, among components no running job holds
  (locked: the shared base under a running ControlNet pipeline included);
  those that queued jobs will need go last. Nothing is evicted unless that
  makes room; with no room, a job waits for the running one to finish.
- Decisions are made under one lock and are quick; copies run outside it, one
  ``make_resident`` at a time per device, so readers (``is_resident``, the
  model listing, the scheduler's warm-first pick) never wait for a copy.

Nothing here is specific to GPUs but pinning: on ``cpu`` or ``meta`` the
moves cost (next to) nothing, but every decision and byte counted is the
same, which is what the tests and ``bench/residency.py`` rely on.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from gpu_pool import accounting
from settings.units import memory_size

Modules = Iterable[torch.nn.Module]
Slot = tuple[dict, str]  # (a module's _parameters or _buffers, key)
T = TypeVar("T")


class DoesNotFit(Exception):
    """A model that cannot fit its device's budget even alone; the message is meant for the chat user."""


@dataclass(eq=False)
class Component:
    """One module under the manager: its tensors' home copies and where they are now."""

    module: torch.nn.Module
    tensors: list[tuple[list[Slot], torch.Tensor]]  # each parameter and buffer once: where it sits, its home copy
    storages: dict[object, int]  # home storage key -> bytes
    resident: bool = False
    locks: int = 0
    last_used: int = 0  # a tick of the manager's clock, for LRU


class Residency:
    """The components on one device and the budget they share."""

    def __init__(self, device: str, budget: int, reserve: int = 0, home: str = "cpu"):
        self.device, self.budget, self.reserve, self.home = device, budget, reserve, home
        self.limit = budget - reserve  # bytes the weights may take
        # Pinned home memory makes the copies asynchronous and about twice as fast.
        self.pin = home == "cpu" and device.startswith("cuda") and torch.cuda.is_available()
        self.resident_bytes = 0
        self.working_bytes = 0  # held by running jobs besides their weights (make_resident's ``working``)
        self.peak_bytes = 0
        self.stats: Counter[str] = Counter()  # jobs, hits, moves_in, moves_out, bytes_in
        self._components: dict[int, Component] = {}  # id(module) -> Component
        self._refs: Counter[object] = Counter()  # resident storage key -> resident components holding it
        self._state = threading.Condition()  # guards every field above; quick sections only
        self._moving = threading.Lock()  # one make_resident at a time: its copies run outside _state
        self._clock = itertools.count(1)

    # --- queries (no waiting on copies) ---------------------------------------------

    def is_resident(self, modules: Modules) -> bool:
        """True when every module is on the device (no modules: trivially)."""
        comps = self._components
        return all((c := comps.get(id(m))) is not None and c.resident for m in modules)

    def bytes_of(self, modules: Modules) -> int:
        """Bytes the modules take on the device, each storage once."""
        self.adopt(modules)
        with self._state:
            return _union_bytes(self._find(modules))

    # --- changes ----------------------------------------------------------------------

    def adopt(self, modules: Modules) -> None:
        """Take charge of ``modules``: their weights go (and stay) home, pinned where that speeds copies.

        Called on the loading thread after a load; modules seen before are left as they are.
        """
        for m in modules:
            if id(m) not in self._components:
                comp = _gather(m, self.home, self.pin)  # slow (pinning): outside the lock
                with self._state:
                    self._components.setdefault(id(m), comp)

    def make_resident(self, name: str, modules: Modules, timeout: float | None = None,
                      soon: Modules = (), working: int = 0) -> list[Component]:
        """Lock ``name``'s components and bring the missing ones onto the device, with room for the
        ``working`` bytes its job holds besides (counted until :meth:`release` frees them).

        Evicts the least recently used unlocked components first, those that
        queued jobs need (``soon``) last; waits (up to ``timeout`` seconds, then
        TimeoutError) while locked ones leave no room. Raises DoesNotFit when
        the model alone is larger than the budget. Pair with :meth:`release`,
        or use :meth:`use`.
        """
        modules = list(modules)
        self.adopt(modules)
        with self._moving:
            with self._state:
                comps = self._find(modules)
                weights = _union_bytes(comps)
                if weights + working > self.limit:
                    raise DoesNotFit(self._too_big(name, weights, working))
                self._lock(comps)
                missing = [c for c in comps if not c.resident]
                try:
                    self._make_room(missing, timeout, {id(m) for m in soon}, working)
                except BaseException:
                    self._unlock(comps)
                    raise
                for c in missing:  # counted before the copy, so no reader ever sees too few bytes
                    self._count(c, +1)
                self.working_bytes += working
                self.peak_bytes = max(self.peak_bytes, self.resident_bytes + self.working_bytes)
                self.stats.update(jobs=1, hits=int(not missing), moves_in=len(missing),
                                  bytes_in=sum(sum(c.storages.values()) for c in missing))
            try:
                with torch.inference_mode(False), torch.no_grad():
                    for c in missing:
                        _move(c, self.device)
            except BaseException:  # e.g. a real CUDA out-of-memory: leave things as they were
                with self._state:
                    for c in missing:
                        self._evict(c)
                    self.working_bytes -= working
                    self._unlock(comps)
                raise
        return comps

    def release(self, comps: Sequence[Component], working: int = 0) -> None:
        """Unlock a model after its job, whose ``working`` bytes are free again; its components stay until evicted."""
        with self._state:
            self.working_bytes -= working
            self._unlock(comps)

    @contextmanager
    def use(self, name: str, modules: Modules, timeout: float | None = None,
            soon: Modules = (), working: int = 0) -> Iterator[list[Component]]:
        """``make_resident`` for the duration of a job."""
        comps = self.make_resident(name, modules, timeout, soon, working)
        try:
            yield comps
        finally:
            self.release(comps, working)

    def evict(self, modules: Modules) -> None:
        """Move the given components home now, unless a running job holds them."""
        with self._state:
            for c in self._find([m for m in modules if id(m) in self._components]):
                if c.resident and not c.locks:
                    self._evict(c)

    def evict_idle(self) -> int:
        """Move home every component no running job holds (after an out-of-memory error); the bytes freed."""
        with self._state:
            before = self.resident_bytes
            for c in self._components.values():
                if c.resident and not c.locks:
                    self._evict(c)
            return before - self.resident_bytes

    def forget(self, keep: set[int]) -> None:
        """Drop the components whose module ids are not in ``keep`` (unloaded models), unless locked."""
        with self._state:
            for key, c in list(self._components.items()):
                if key not in keep and not c.locks:
                    if c.resident:
                        self._evict(c)
                    del self._components[key]

    # --- inside the lock --------------------------------------------------------------

    def _find(self, modules: Modules) -> list[Component]:
        found = {id(m): self._components[id(m)] for m in modules}  # a module listed twice counts once
        return list(found.values())

    def _make_room(self, missing: list[Component], timeout: float | None, soon: set[int], working: int) -> None:
        """Evict until ``missing`` and ``working`` bytes fit; wait for running jobs when even evicting every
        unlocked component would not make room (so nothing is evicted for nothing)."""
        while (extra := self._extra(missing) + working) + self.resident_bytes + self.working_bytes > self.limit:
            locked = self.working_bytes + _union_bytes(c for c in self._components.values() if c.resident and c.locks)
            victims = [c for c in self._components.values() if c.resident and not c.locks]
            if victims and locked + extra <= self.limit:
                self._evict(min(victims, key=lambda c: (id(c.module) in soon, c.last_used)))
            elif not self._state.wait(timeout):
                raise TimeoutError(f"no room on {self.device}: the models of running jobs fill the budget")

    def _extra(self, comps: list[Component]) -> int:
        """Bytes ``comps`` would add: storages not on the device yet, each once."""
        new: dict[object, int] = {}
        for c in comps:
            new.update((k, n) for k, n in c.storages.items() if k not in self._refs)
        return sum(new.values())

    def _count(self, c: Component, sign: int) -> None:
        c.resident = sign > 0
        for key, n in c.storages.items():
            if sign > 0:
                self.resident_bytes += n if self._refs[key] == 0 else 0
                self._refs[key] += 1
            else:
                self._refs[key] -= 1
                if self._refs[key] == 0:
                    del self._refs[key]
                    self.resident_bytes -= n

    def _evict(self, c: Component) -> None:
        _restore(c)
        if c.resident:
            self._count(c, -1)
            self.stats["moves_out"] += 1

    def _lock(self, comps: list[Component]) -> None:
        tick = next(self._clock)
        for c in comps:
            c.locks += 1
            c.last_used = tick

    def _unlock(self, comps: Sequence[Component]) -> None:
        tick = next(self._clock)
        for c in comps:
            c.locks -= 1
            c.last_used = tick
        self._state.notify_all()

    def _too_big(self, name: str, weights: int, working: int) -> str:
        budget = memory_size(self.limit)
        if self.reserve:
            budget += f" ({memory_size(self.budget)} minus a {memory_size(self.reserve)} reserve)"
        need = f"{memory_size(weights + working)} on {self.device}"
        if working:
            need += f" ({memory_size(weights)} of weights, {memory_size(working)} of working memory)"
        return f"{name} needs {need} but the budget there is {budget}."


# --- scheduling -----------------------------------------------------------------------


def warm_first(queue: Sequence[T], is_warm: Callable[[T], bool], overtaken: Callable[[T], int],
               max_overtakes: int) -> int:
    """Index of the job to run next: the first one whose model is resident, unless that
    would pass a job already overtaken ``max_overtakes`` times. The caller counts one
    overtake for every job ahead of the one picked.

    Overtake counts never grow towards the back of the queue (a job passed is passed
    together with everything ahead of it), so the first job at the bound stops the scan.
    """
    for i, job in enumerate(queue):
        if is_warm(job) or overtaken(job) >= max_overtakes:
            return i
    return 0


# --- moving tensors ---------------------------------------------------------------------
# Every parameter and buffer is swapped in its owners' dicts, as Module._apply does when the
# new tensor cannot share the old one's type (meta): one code path for cuda, cpu and meta.
# A tensor two owners hold (tied weights) is moved once and stays shared.


def _gather(module: torch.nn.Module, home: str, pin: bool) -> Component:
    """Every tensor ``module`` holds, once each with the slots holding it, put at ``home``."""
    held: dict[int, tuple[list[Slot], torch.Tensor]] = {}
    for owner in module.modules():
        for table in (owner._parameters, owner._buffers):
            for name, t in table.items():
                if t is not None:
                    held.setdefault(id(t), ([], t))[0].append((table, name))
    tensors = []
    with torch.inference_mode(False), torch.no_grad():
        while held:  # popped as we go, so an old copy is freed before the next is made
            slots, t = held.pop(next(iter(held)))
            h = _at_home(t, home, pin)
            if h is not t:
                h = _like(t, h)
                _put(slots, h)
            tensors.append((slots, h))
    return Component(module, tensors, accounting.storage_map([module]))


def _at_home(t: torch.Tensor, home: str, pin: bool) -> torch.Tensor:
    if t.device != torch.device(home):
        t = t.to(home)
    if accounting.wraps(t):  # a quantized weight (torchao): no pin_memory; its copies are synchronous
        return t
    return t.pin_memory() if pin and not t.is_pinned() else t


def _like(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    return torch.nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, torch.nn.Parameter) else new


def _put(slots: list[Slot], t: torch.Tensor) -> None:
    for table, name in slots:
        table[name] = t


def _move(c: Component, device: str) -> None:
    for slots, home in c.tensors:
        # non_blocking: asynchronous from pinned memory, ordered before the job's kernels on the same stream
        _put(slots, _like(home, home.to(device, non_blocking=True)))


def _restore(c: Component) -> None:
    for slots, home in c.tensors:
        _put(slots, home)  # the device copy is freed (to the caching allocator) once nothing uses it


def _union_bytes(comps: Iterable[Component]) -> int:
    seen: dict[object, int] = {}
    for c in comps:
        seen.update(c.storages)
    return sum(seen.values())
