"""What the loopback fakes share: an aiohttp app on 127.0.0.1 at a free port, used as an async context
manager that checks, on a clean exit, what the fake recorded."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class LoopbackServer:
    """A fake's server. A subclass builds its app in ``start`` and serves it with ``_serve``; leaving the
    ``async with`` without an error runs ``_before_stop`` (while it still serves: checks that wait for
    the client), ``stop``, then ``_after_stop`` (checks of what was recorded)."""

    _runner: web.AppRunner | None = None

    async def _serve(self, app: web.Application, shutdown_timeout: float = 1) -> str:
        """Serve ``app``; returns its origin, ``http://127.0.0.1:PORT``."""
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def start(self) -> Any:
        raise NotImplementedError

    async def stop(self) -> None:
        await self._close()

    async def _before_stop(self) -> None:
        """On a clean exit, while still serving."""

    def _after_stop(self) -> None:
        """On a clean exit, once stopped."""

    async def __aenter__(self) -> Any:
        return await self.start()

    async def __aexit__(self, exc_type: Any, *_: Any) -> None:
        try:
            if exc_type is None:
                await self._before_stop()
        finally:
            await self.stop()
        if exc_type is None:
            self._after_stop()
