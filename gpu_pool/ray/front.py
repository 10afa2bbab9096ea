"""The pool process on Ray: the routes of ``gpu_pool/routes.py``, with the Serve replicas behind the ``Front``.

Start: join the cluster (or start a Ray instance here), deploy the replicas,
listen, then place every configured model on one replica in the background
(``/health`` answers at once; early jobs wait for their model, as locally).
Jobs stream from the replica that ``router.HotModelRouter`` picks; each job
and placement names the models every replica holds (the safety checker), which
the replica loads where it lacks them. Admin calls reach every replica. A
replica that dies mid-job ends the job with code ``unavailable`` and the words
the bot uses for a pool that died; Serve starts a new replica, and the next
job for that model loads it again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any
from collections.abc import AsyncIterator

import ray
from aiohttp import web
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle

import settings
from gpu_pool import api, backend, openai_api, routes
from gpu_pool.backend import Refused, Reloaded
from gpu_pool.protocol import UNAVAILABLE, Event, JobId, JobRequest, ModelInfo, QueuedJob
from gpu_pool.ray import router
from gpu_pool.ray.placement import EVERY_REPLICA
from gpu_pool.ray.replica import PoolReplica, Spec

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
APP, DEPLOYMENT = "visual-chatgpt-pool", "PoolReplica"


class Front:
    """Jobs and admin calls over the handle to the replicas: the pool's ``backend.Backend`` on Ray."""

    def __init__(self, config: settings.Config, handle: DeploymentHandle):
        self.config, self.handle = config, handle
        self.allowed: dict[str, Spec] = {name: (None, None) for name in config.models}  # what users may run
        self._placing: dict[str, asyncio.Task] = {}

    @property
    def helpers(self) -> dict[str, Spec]:
        """The allowed models every replica holds, with their device and dtype."""
        return {name: self.allowed[name] for name in EVERY_REPLICA if name in self.allowed}

    async def run(self, request: JobRequest) -> AsyncIterator[Event]:
        """A job's events from its replica; the last one is done or failed."""
        spec = self.allowed.get(request.model)  # None: the replica answers why it cannot run it
        model = request.model if spec is not None else ""
        stream = self.handle.options(stream=True, multiplexed_model_id=model).run.remote(request, spec, self.helpers)
        job_id = ""
        try:
            async for ev in stream:
                job_id = ev.job_id
                yield ev
                if ev.kind in ("done", "failed"):
                    return
            raise RuntimeError("the replica's stream ended without a result")
        except RayTaskError as e:  # our code raised in the replica: a bug, not a dead replica
            log.error("job %s (%s) crashed its replica:\n%s", job_id, request.model, e)
            yield Event("failed", job_id, message="Something went wrong in the image engine.", code="internal",
                        detail=str(e))
        except Exception as e:  # the replica died (ActorDiedError ...) or could not be reached
            # to the user, a replica that died is a pool that died: the same words as core/pool_client.py
            log.warning("job %s (%s) lost its replica: %r", job_id or "(not started)", request.model, e)
            yield Event("failed", job_id, message=UNAVAILABLE, code="unavailable", detail=str(e))
        finally:
            stream.cancel()  # a no-op once the stream ended; stops the job when the bot went away

    async def each(self, method: str, *args: Any) -> dict[str, Any]:
        """Call ``method`` on every replica; the answers by replica id (replicas gone meanwhile left out)."""
        ids = router.replica_ids(DEPLOYMENT)
        calls = {rid: getattr(self.handle.options(multiplexed_model_id=router.PIN + rid), method).remote(rid, *args)
                 for rid in ids}
        out = {}
        for rid, call in calls.items():
            try:
                answer = await call
            except Exception as e:
                log.warning("replica %s did not answer %s: %r", rid, method, e)
                continue
            if answer is not None:
                out[rid] = answer
        return out

    async def place(self, name: str) -> dict[str, Any]:
        """Load ``name`` on the replica the router picks; its listing there."""
        return await self.handle.options(multiplexed_model_id=name).place.remote(self.allowed[name], self.helpers)

    def place_soon(self, names) -> None:
        """Place each of ``names`` in the background, once at a time each."""
        for name in names:
            if name in self.allowed and name not in self._placing:
                task = self._placing[name] = asyncio.create_task(self.place(name), name=f"place-{name}")
                task.add_done_callback(lambda t, name=name: self._placed(name, t))

    def _placed(self, name: str, task: asyncio.Task) -> None:
        self._placing.pop(name, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("placing %s failed: %r (the next model listing or job tries again)", name, task.exception())

    # --- the Backend's calls ------------------------------------------------------------

    async def cancel(self, job_id: str) -> bool:
        jid = JobId.parse(job_id)
        if not jid.replica:
            return False
        return bool(await self.handle.options(multiplexed_model_id=router.PIN + jid.replica).cancel.remote(
            jid.replica, jid.job))

    async def queue(self) -> list[QueuedJob]:
        """Every replica's jobs (each replica is its own devices' queue)."""
        return [QueuedJob(**j) for jobs in (await self.each("queue")).values() for j in jobs]

    async def models(self) -> list[ModelInfo]:
        return [ModelInfo.from_json(m) for m in await self.infos()]

    async def reload(self, name: str | None) -> Reloaded:
        """Re-read config.toml, reload on every replica that holds the model(s), place what nobody holds."""
        if name is not None and name not in self.allowed:
            raise self._not_allowed(name)
        try:
            config = settings.reload(self.config)
        except settings.ConfigError as e:
            raise Refused(str(e), "config") from None
        self.config = config
        if name is None:
            self.allowed = {n: (None, None) for n in config.models}
        else:
            self.allowed[name] = (None, None)  # an admin's device and dtype last until a reload
        answers = await self.each("reload", name)
        if errors := [a["error"] for a in answers.values() if "error" in a]:
            raise Refused(errors[0], "config")
        names = {n for a in answers.values() for n in a["reloaded"]}
        failed = {n for a in answers.values() for n in a["failed"]}
        held = {m["name"] for a in (await self.each("models")).values() for m in a}
        for placed in await asyncio.gather(*(self.place(n) for n in self.allowed if n not in held and
                                             (name is None or n == name))):
            names.add(placed.get("name"))
            if placed.get("state") != "ready":
                failed.add(placed.get("name"))
        return Reloaded(sorted(n for n in names if n), sorted(n for n in failed if n))

    async def load(self, name: str, device: str | None, dtype: str | None) -> list[ModelInfo]:
        """Load ``name`` again with the admin's device and dtype where replicas hold it, else place it."""
        self.allowed[name] = (device, dtype)
        listed = [a for a in (await self.each("load", name, (device, dtype))).values() if a]
        if not listed:  # no replica holds it yet
            listed = [await self.place(name)]
        return [ModelInfo.from_json(m) for m in listed]

    async def unload(self, name: str) -> None:
        if name not in self.allowed:
            raise self._not_allowed(name)
        del self.allowed[name]
        await self.each("unload", name)

    def health(self) -> dict[str, Any]:
        return {"backend": "ray"}

    @staticmethod
    def _not_allowed(name: Any) -> Refused:
        return backend.not_loaded(name) if name in settings.MODEL_NAMES else backend.unknown_model(name)

    async def infos(self) -> list[dict[str, Any]]:
        """Every replica's models, and the allowed ones no replica holds (being placed again)."""
        infos = [m for answer in (await self.each("models")).values() for m in answer]
        held = {m["name"] for m in infos}
        missing = [n for n in self.allowed if n not in held]
        self.place_soon(missing)  # e.g. after their replica died
        for name in missing:
            cfg = self.config.models.get(name)
            infos.append(ModelInfo(name, "(being placed on a replica)", cfg.dtype if cfg else "auto",
                                   cfg.source if cfg else "", "loading").to_json())
        return infos

    @property
    def limits(self) -> settings.LimitsConfig:
        return self.config.limits

    async def llm_info(self) -> ModelInfo | None:
        """The LLM's best listing over the replicas: ready where any copy is ready."""
        if openai_api.MODEL not in self.allowed:
            return None
        copies = [ModelInfo.from_json(m) for m in await self.infos() if m["name"] == openai_api.MODEL]
        rank = {"ready": 0, "loading": 1, "failed": 2}
        return min(copies, key=lambda m: rank.get(m.state, 3), default=None)

    async def close(self) -> None:
        for task in list(self._placing.values()):
            task.cancel()


# --- the routes (gpu_pool/routes.py, with this Front as their Backend) ----------------------


def make_app(front: Front) -> web.Application:
    app = routes.make_app()
    app[routes.BACKEND] = front
    app.router.add_get("/replicas", replicas)  # Ray only: each replica's models and counters
    api.attach(app, front.config, routes.BACKEND)  # [api]: the images API and MCP, when enabled
    return app


async def replicas(request: web.Request) -> web.Response:
    front = request.app[routes.BACKEND]
    return web.json_response({"replicas": list((await front.each("info")).values())})


# --- the cluster -------------------------------------------------------------------------


def connect(config: settings.Config) -> None:
    """Join the configured cluster, or start a Ray instance in this process; check it can hold the replicas."""
    cfg = config.pool.ray
    # The replicas import the project, and see the hub settings this process has (offline mode, cache, token).
    env = {k: v for k, v in os.environ.items() if k.startswith(("HF_", "TRANSFORMERS_"))}
    runtime_env = {"env_vars": {**env, "PYTHONPATH": str(ROOT)}}
    if cfg.address:
        ray.init(address=cfg.address, runtime_env=runtime_env, logging_level=logging.WARNING)
    else:
        # "local": a new instance, even when this machine runs a cluster of its own
        ray.init(address="local", num_cpus=cfg.num_cpus or None, object_store_memory=cfg.object_store_memory or None,
                 include_dashboard=False, runtime_env=runtime_env, logging_level=logging.WARNING)
    have = ray.cluster_resources()
    for resource, each in (("GPU", cfg.gpus_per_replica), ("CPU", cfg.cpus_per_replica)):
        need = cfg.replicas * each
        if need > have.get(resource, 0):
            ray.shutdown()
            raise RuntimeError(
                f"pool.ray: {cfg.replicas} replica(s) with {each:g} {resource}(s) each need {need:g} {resource}(s), "
                f"but the Ray cluster has {have.get(resource, 0):g}. Add machines (README: Scaling out), or lower "
                f"pool.ray.replicas{' or set gpus_per_replica = 0 to run on CPUs' if resource == 'GPU' else ''}.")


def deploy(config: settings.Config) -> DeploymentHandle:
    """Deploy (or update) the replicas; returns once they all run."""
    cfg = config.pool.ray
    serve.start(proxy_location="Disabled")  # no Serve HTTP proxy: this process is the pool's HTTP face
    replica = PoolReplica.options(
        name=DEPLOYMENT, num_replicas=cfg.replicas,
        ray_actor_options={"num_gpus": cfg.gpus_per_replica, "num_cpus": cfg.cpus_per_replica},
        max_ongoing_requests=10_000,  # the replica's own device queue orders its jobs, so Serve never holds one back
        request_router_config=RequestRouterConfig(request_router_class="gpu_pool.ray.router:HotModelRouter",
                                                  request_router_kwargs={"spread_after": cfg.spread_after}),
        health_check_period_s=2, graceful_shutdown_timeout_s=5,
        logging_config={"log_level": "WARNING", "enable_access_log": False})
    return serve.run(replica.bind(str(config.path), config.load), name=APP, route_prefix=None)


def leave(config: settings.Config) -> None:
    """Take the replicas down: with the Ray instance this process started, or from the cluster it joined."""
    # Ray's failure-signal handler saw the SIGTERM and armed a 3 s SIGALRM that would end this process
    # halfway through (leaving Ray's agent processes behind): this cleanup decides when it is done.
    signal.alarm(0)
    try:
        if config.pool.ray.address:
            serve.delete(APP)  # frees the cluster's GPUs; the cluster itself is not ours
    finally:
        ray.shutdown()  # a Ray instance this process started stops with it, replicas and all
        log.info("left Ray")


async def serve_on_ray(config: settings.Config) -> None:
    """Run the pool on Ray until cancelled."""
    try:
        await asyncio.to_thread(connect, config)
    except RuntimeError as e:  # a cluster too small: say so in one line (the bot shows the pool's log)
        log.error("%s", e)
        raise SystemExit(1) from None
    runner = front = None
    try:
        handle = await asyncio.to_thread(deploy, config)
        front = Front(config, handle)
        runner = web.AppRunner(make_app(front), handle_signals=False)
        await runner.setup()
        await routes.site(runner, config.pool).start()
        log.info("pool listening on %s; %d replica(s) on Ray", config.pool.url, config.pool.ray.replicas)
        front.place_soon(front.allowed)
        await asyncio.Event().wait()
    finally:
        if front:
            await front.close()
        if runner:
            await runner.cleanup()
        await asyncio.to_thread(leave, config)
