"""vchat-mcp (python -m gpu_pool.api.mcp_stdio): the pool's MCP tools over stdio, for desktop clients.

It relays every tool listing and call to a pool's listener (``/mcp``, streamable HTTP) with a bearer
key, so the keys, quotas and safety filter are the listener's, and the pool may be on another machine:

    vchat-mcp --url http://gpu-box:8090/mcp        (the key in the environment: VCHAT_API_KEY)

Progress notifications come back to the desktop client; a call it cancels is cancelled at the
listener, which cancels the pool job. What goes wrong (no key, a listener that cannot be reached)
is written to stderr, which desktop clients show in their MCP log.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import anyio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import CallToolResult, ListToolsResult, TextContent

KEY_ENV = "VCHAT_API_KEY"
log = logging.getLogger("vchat-mcp")


def relay_server(remote: Client) -> Server:
    """A server whose tools are ``remote``'s: listings and calls go through, progress comes back."""

    async def list_tools(ctx: Any, params: Any) -> ListToolsResult:
        return await remote.list_tools()

    async def call_tool(ctx: Any, params: Any) -> CallToolResult:
        async def progress(done: float, total: float | None, message: str | None) -> None:
            try:
                await ctx.session.report_progress(done, total, message)
            except Exception:  # best-effort
                pass

        try:
            return await remote.call_tool(params.name, params.arguments or {}, progress_callback=progress)
        except Exception as e:  # the listener went away mid-call
            return CallToolResult(content=[TextContent(type="text", text=f"The pool's listener failed: {e}")],
                                  is_error=True)

    return Server("vchat-pool", on_list_tools=list_tools, on_call_tool=call_tool)


async def relay(url: str, key: str) -> None:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    async with Client(streamable_http_client(url, http_client=http)) as remote:
        server = relay_server(remote)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vchat-mcp", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=os.environ.get("VCHAT_MCP_URL", "http://127.0.0.1:8090/mcp"),
                        help="the listener's /mcp (default: $VCHAT_MCP_URL or http://127.0.0.1:8090/mcp)")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="vchat-mcp: %(message)s")
    key = os.environ.get(KEY_ENV, "")
    if not key:
        print(f"vchat-mcp: set {KEY_ENV} to your key for the pool's listener", file=sys.stderr)
        return 2
    try:
        anyio.run(relay, args.url, key)
    except Exception as e:
        print(f"vchat-mcp: cannot reach the pool's listener at {args.url}: {e!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
