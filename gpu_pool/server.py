"""The pool's HTTP face (see ``gpu_pool/protocol.py`` for the messages).

Serves on a unix socket by default, TCP when the config names a host. The same
socket serves the built-in LLM to OpenAI clients (``gpu_pool/openai_api.py``).
Models start loading in the background at startup, so ``/health`` answers
at once and early jobs wait for their model.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import AsyncIterator

from aiohttp import web

import settings
from gpu_pool import openai_api, routes
from gpu_pool.protocol import Event, FrameError, JobRequest, ModelInfo, decode_frame, event_to_frame, request_from_frame
from gpu_pool.registry import NotLoaded, Registry
from gpu_pool.scheduler import Scheduler

log = logging.getLogger(__name__)
REGISTRY = web.AppKey("registry", Registry)
SCHEDULER = web.AppKey("scheduler", Scheduler)
LLM_JOBS = web.AppKey("llm_jobs", openai_api.Backend)


def make_app(config: settings.Config) -> web.Application:
    app = web.Application(client_max_size=routes.MAX_REQUEST)
    routes.add_routes(app, health=health, submit=submit, cancel=cancel, models=models, reload=reload, load=load,
                      unload=unload)
    openai_api.add_routes(app, LLM_JOBS)  # the built-in LLM, for OpenAI clients

    async def lifespan(app: web.Application):
        registry = Registry(config)
        app[REGISTRY] = registry
        app[SCHEDULER] = Scheduler(registry)
        app[LLM_JOBS] = LocalJobs(registry, app[SCHEDULER])
        loading = registry.start_all()
        yield
        for t in loading:
            t.cancel()
        app[SCHEDULER].close()
        registry.close()

    app.cleanup_ctx.append(lifespan)
    return app


class LocalJobs:
    """The built-in LLM's jobs on this process's Scheduler (``openai_api.Backend``)."""

    def __init__(self, registry: Registry, scheduler: Scheduler):
        self.registry, self.scheduler = registry, scheduler

    @property
    def limits(self) -> settings.LimitsConfig:
        return self.registry.config.limits

    async def run(self, request: JobRequest) -> AsyncIterator[Event]:
        job = self.scheduler.submit(request)
        try:
            while True:
                ev = await job.events.get()
                yield ev
                if ev.kind in ("done", "failed"):
                    return
        finally:
            if not job.finished:  # closed early: nobody wants this job any more
                self.scheduler.cancel(job.id)
            self.scheduler.forget(job)

    async def llm_info(self) -> ModelInfo | None:
        return self.registry.info(openai_api.MODEL)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "pid": os.getpid()})


async def submit(request: web.Request) -> web.StreamResponse:
    """Queue a job and stream its events until it is done or failed."""
    scheduler = request.app[SCHEDULER]
    try:
        req = request_from_frame(*decode_frame(await request.read()))
    except FrameError as e:
        return web.json_response({"ok": False, "message": f"Bad job request: {e}"}, status=400)
    job = scheduler.submit(req)
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream", "X-Job-Id": job.id})
    await resp.prepare(request)
    try:
        while True:
            ev = await job.events.get()
            await resp.write(event_to_frame(ev))
            if ev.kind in ("done", "failed"):
                break
    except (ConnectionResetError, asyncio.CancelledError):
        # the client went away: nobody wants this job any more
        scheduler.cancel(job.id)
        log.info("client left; cancelled job %s", job.id)
        raise
    finally:
        scheduler.forget(job)
    await resp.write_eof()
    return resp


async def cancel(request: web.Request) -> web.Response:
    ok = request.app[SCHEDULER].cancel(request.match_info["job_id"])
    return web.json_response({"ok": ok, "message": "cancelling" if ok else "no such running job"})


async def models(request: web.Request) -> web.Response:
    return web.json_response({"models": [m.to_json() for m in request.app[REGISTRY].infos()]})


def _admin_reply(request: web.Request, message: str, ok: bool = True) -> web.Response:
    return routes.admin_reply(message, [m.to_json() for m in request.app[REGISTRY].infos()], ok)


async def reload(request: web.Request) -> web.Response:
    name = (await routes.json_body(request)).get("model")
    registry = request.app[REGISTRY]
    try:
        names = await registry.reload(name)
    except (NotLoaded, settings.ConfigError) as e:
        return _admin_reply(request, str(e), ok=False)
    failed = [n for n in names if (e := registry.entries.get(n)) and e.state == "failed"]
    msg = f"Reloaded {', '.join(names) or 'nothing'}." + (f" Failed: {', '.join(failed)}." if failed else "")
    return _admin_reply(request, msg, ok=not failed)


async def load(request: web.Request) -> web.Response:
    body = await routes.json_body(request)
    name, device, dtype = body.get("model"), body.get("device"), body.get("dtype")
    if problem := routes.load_problem(name, device, dtype):
        return _admin_reply(request, problem, ok=False)
    try:
        entry = await request.app[REGISTRY].load(name, device, dtype)
    except NotLoaded as e:
        return _admin_reply(request, str(e), ok=False)
    if entry.state == "failed":
        return _admin_reply(request, f"{name} could not be loaded: {entry.error}", ok=False)
    return _admin_reply(request, f"{name} is loaded on {entry.device} ({entry.dtype}).")


async def unload(request: web.Request) -> web.Response:
    name = (await routes.json_body(request)).get("model")
    try:
        await request.app[REGISTRY].unload(str(name))
    except NotLoaded as e:
        return _admin_reply(request, str(e), ok=False)
    return _admin_reply(request, f"{name} is unloaded.")


async def serve(config: settings.Config) -> None:
    """Run the pool until cancelled."""
    app = make_app(config)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await routes.site(runner, config.pool).start()
    log.info("pool listening on %s", config.pool.url)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
