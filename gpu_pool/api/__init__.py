"""The pool as a service: a listener for clients other than the bot (``[api]`` in config.toml, off by default).

    app.py         the listener: one port, keys checked on every request, started inside the pool process
    images.py      OpenAI's images API (/v1/images/generations, edits, variations; /v1/models)
    mcp_server.py  the same tools as an MCP server (/mcp, streamable HTTP)
    mcp_stdio.py   vchat-mcp: those tools over stdio for desktop clients (relayed to /mcp)
    service.py     the tools themselves, over the pool's ``Backend`` and its one job path
    keys.py        named bearer keys (from the environment or a file, never config.toml), rates, daily quotas

It sits on the pool's side of the seam: it runs jobs through the ``Backend`` the pool's own routes
use (``gpu_pool/local.py`` or ``gpu_pool/ray/front.py``) and knows nothing of chat.
"""

from __future__ import annotations

from aiohttp import web

import settings


def attach(app: web.Application, config: settings.Config, backend: web.AppKey) -> None:
    """Run the listener beside the pool's own routes while ``app`` serves, when ``[api] enabled``;
    its jobs go to ``app[backend]``."""
    if not config.api.enabled:
        return

    async def listener(app: web.Application):
        from gpu_pool.api.app import Listener  # late: starlette, uvicorn and mcp only when enabled

        running = await Listener(config, lambda: app[backend]).start()
        yield
        await running.stop()

    app.cleanup_ctx.append(listener)
