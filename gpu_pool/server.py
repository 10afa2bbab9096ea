"""The pool in one process: the routes of ``gpu_pool/routes.py`` over a ``local.LocalPool``.

Serves on a unix socket by default, TCP when the config names a host. The same
socket serves the built-in LLM to OpenAI clients (``gpu_pool/openai_api.py``).
Models start loading in the background at startup, so ``/health`` answers
at once and early jobs wait for their model.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

import settings
from gpu_pool import api, routes
from gpu_pool.local import LocalPool

log = logging.getLogger(__name__)


def make_app(config: settings.Config) -> web.Application:
    app = routes.make_app()

    async def lifespan(app: web.Application):
        pool = app[routes.BACKEND] = LocalPool(config)
        pool.start()
        yield
        pool.close()

    app.cleanup_ctx.append(lifespan)
    api.attach(app, config, routes.BACKEND)  # [api]: the images API and MCP, when enabled
    return app


async def serve(config: settings.Config) -> None:
    """Run the pool until cancelled."""
    runner = web.AppRunner(make_app(config), handle_signals=False)
    await runner.setup()
    await routes.site(runner, config.pool).start()
    log.info("pool listening on %s", config.pool.url)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
