"""One pool replica on Ray Serve: the pool's own Registry and Scheduler, on one GPU (or CPU).

Jobs arrive with their model as Serve's multiplexed model id, routed by
``router.HotModelRouter``. ``_hold`` (``serve.multiplexed``) tells Serve this
replica holds the model; the Registry loads it, and the residency budget of
``[residency]`` decides, in bytes, which loaded models stay on the GPU.
Serve's count limit is set to every model there is, so Serve never evicts.

Every job and placement also names the models every replica holds (the
safety checker, ``placement.EVERY_REPLICA``) with their device and dtype: the
replica loads those it lacks, so the images it draws are checked where they
are drawn, also on a replica Serve started in place of one that died.

Admin calls take the replica id they were meant for (``expect``) and answer
None when it is not this one: the router sends a call for a replica that is
gone to another replica (see ``router.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
from collections import Counter
from typing import Any
from collections.abc import AsyncIterator

import ray
from ray import serve

import settings
from gpu_pool import heap
from gpu_pool.protocol import Event, JobId, JobRequest
from gpu_pool.ray import placement
from gpu_pool.ray.placement import EVERY_REPLICA

# The Registry and Scheduler (torch, diffusers) are imported in the replica only, not in the
# pool process that deploys this class.

log = logging.getLogger(__name__)
Spec = tuple[str | None, str | None]  # the device and dtype an admin loaded it with; (None, None): the config's


@serve.deployment
class PoolReplica:
    def __init__(self, config_path: str, load: str = ""):
        logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                            format="%(asctime)s %(levelname)s pool replica %(name)s: %(message)s")
        from gpu_pool.registry import Registry
        from gpu_pool.scheduler import Scheduler

        heap.keep_freed_buffers()  # as the local pool's process (gpu_pool/heap.py)

        self.registry = Registry(settings.load(config_path, env_check=False, load=load))
        self.scheduler = Scheduler(self.registry)
        self.id = serve.get_replica_context().replica_id.unique_id
        self.node = ray.util.get_node_ip_address()
        # jobs; warm: the model was ready here when the job came; loads: models loaded for a job or placement
        self.stats: Counter[str] = Counter()
        self._loading: set[asyncio.Task] = set()
        log.info("replica %s up on %s (pid %s)", self.id, self.node, os.getpid())

    # --- jobs -------------------------------------------------------------------------

    @serve.multiplexed(max_num_models_per_replica=len(settings.MODEL_NAMES))
    async def _hold(self, model: str) -> str:
        return model  # Serve now reports this replica as holding ``model``; the Registry does the loading

    async def _ensure(self, name: str, spec: Spec) -> None:
        """Have ``name`` loaded or loading (a job then waits for it, as in the local pool), and hold it."""
        if name not in self.registry.entries:  # no await before the entry exists: concurrent calls load it once
            self.stats["loads"] += 1
            task = self.registry.start_load(name, *spec)
            self._loading.add(task)
            task.add_done_callback(self._loading.discard)
        await self._hold(name)

    async def _everywhere(self, helpers: dict[str, Spec]) -> None:
        """Have the models every replica holds (``helpers``: name -> spec) loaded or loading here."""
        for name, spec in helpers.items():
            if name not in self.registry.entries:
                await self._ensure(name, spec)

    async def run(self, request: JobRequest, spec: Spec | None, helpers: dict[str, Spec]) -> AsyncIterator[Event]:
        """A job's events, streamed back to the pool process; ``spec`` None: a model not offered to users."""
        if spec is not None:
            name = serve.get_multiplexed_model_id() or request.model
            entry = self.registry.entries.get(name)
            self.stats.update(jobs=1, warm=int(entry is not None and entry.state == "ready"))
            await self._ensure(name, spec)
        await self._everywhere(helpers)  # a drawing job's images wait for this replica's checker
        # Serve cancelling this stream (the bot went away) closes the scheduler's, which cancels the job.
        async with contextlib.aclosing(self.scheduler.stream(request)) as events:
            async for ev in events:
                yield dataclasses.replace(ev, job_id=str(JobId(ev.job_id, self.id)))

    async def place(self, spec: Spec, helpers: dict[str, Spec]) -> dict[str, Any]:
        """Load the model of the multiplexed id here; its listing once loaded (or failed)."""
        from gpu_pool.registry import NotLoaded

        name = serve.get_multiplexed_model_id()
        await self._ensure(name, spec)
        await self._everywhere(helpers)
        entry = self.registry.entries.get(name)
        if entry is not None:
            try:
                await asyncio.shield(entry.ready)
            except NotLoaded:
                pass  # the listing says why
        return self._infos([name])[0] if name in self.registry.entries else {}

    # --- admin (each call names the replica it is meant for) ----------------------------

    async def models(self, expect: str) -> list[dict[str, Any]] | None:
        return self._infos() if expect == self.id else None

    async def cancel(self, expect: str, job_id: str) -> bool | None:
        return self.scheduler.cancel(job_id) if expect == self.id else None

    async def queue(self, expect: str) -> list[dict[str, Any]] | None:
        """This replica's jobs, named as the front names them ("replica:job")."""
        if expect != self.id:
            return None
        return [dict(j.to_json(), job_id=str(JobId(j.job_id, self.id))) for j in self.scheduler.listing()]

    async def info(self, expect: str) -> dict[str, Any] | None:
        if expect != self.id:
            return None
        counts = {k: self.stats[k] for k in ("jobs", "warm", "loads", "reloads")}
        return {"replica": self.id, "node": self.node, "pid": os.getpid(), "models": list(self.registry.entries),
                **counts}

    async def reload(self, expect: str, name: str | None) -> dict[str, Any] | None:
        """``Registry.reload`` of ``name`` (or every model) where this replica holds it; a model every
        replica holds is loaded where it is missing."""
        if expect != self.id:
            return None
        try:
            names = await self.registry.reload(name, where=placement.reloads_here(self.registry.entries))
        except settings.ConfigError as e:
            return {"error": str(e)}
        self.stats["reloads"] += len(names)
        failed = [n for n in names if self.registry.entries[n].state == "failed"]
        return {"reloaded": names, "failed": failed}

    async def load(self, expect: str, name: str, spec: Spec) -> dict[str, Any] | None:
        """Load ``name`` again with an admin's device/dtype, where this replica holds it ({} where not;
        a model every replica holds is loaded here either way)."""
        if expect != self.id:
            return None
        if name not in self.registry.entries and name not in EVERY_REPLICA:
            return {}
        await self._hold(name)
        await self.registry.load(name, *spec)
        return self._infos([name])[0]

    async def unload(self, expect: str, name: str) -> bool | None:
        if expect != self.id:
            return None
        if name not in self.registry.entries:
            return False
        await self.registry.unload(name)
        return True

    def _infos(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        """The registry's listing (ModelInfo as JSON), each device named with this replica and its machine."""
        out = []
        for m in self.registry.infos():
            if names is None or m.name in names:
                out.append(dataclasses.replace(m, device=f"{m.device} of replica {self.id} ({self.node})").to_json())
        return out
