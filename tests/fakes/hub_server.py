"""A loopback Hugging Face hub: serves folders as model repos to the real huggingface_hub client.

Point ``HF_ENDPOINT`` at ``hub.url``. It answers what ``HfApi.list_repo_tree`` and
``hf_hub_download`` ask (plain HTTP, no Xet):

    GET  /api/models/{org}/{name}/tree/{revision}?recursive=...   the repo's files with their sizes
    HEAD /{org}/{name}/resolve/{revision}/{path}                  ETag, X-Repo-Commit, Content-Length
    GET  /{org}/{name}/resolve/{revision}/{path}                  the bytes, at ``bytes_per_s`` if set

    GET  /api/agent-harnesses                                     (asked once a day by the client: none)
    HEAD /                                                        the front page (`--fetch` asks it first)

``failing=N`` answers the first N listings with HTTP 503 (the client retries them).

and records every request, so a test can say which files were downloaded. A
request it does not know is recorded in ``unknown`` (the test fails on it).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path

from aiohttp import web

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, Path], bytes_per_s: float | None = None, failing: int = 0):
        self.repos = repos  # "org/name" -> folder
        self.bytes_per_s = bytes_per_s
        self.failing = failing  # listings still to answer with 503
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.unknown: list[str] = []
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()

    def downloaded(self, repo: str | None = None) -> list[str]:
        """Files whose bytes were sent (GET), as "org/name/path", in order."""
        out = [p.split("/resolve/")[0].lstrip("/") + "/" + p.split("/resolve/")[1].split("/", 1)[1]
               for m, p in self.requests if m == "GET" and "/resolve/" in p]
        return [f for f in out if repo is None or f.startswith(repo + "/")]

    # --- serving --------------------------------------------------------------------

    def _file(self, request: web.Request) -> Path | None:
        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        folder = self.repos.get(repo)
        path = (folder / request.match_info["path"]) if folder else None
        return path if path is not None and path.is_file() else None

    async def tree(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path))
        if self.failing > 0:
            self.failing -= 1
            return web.Response(status=503, text="Service Unavailable")
        folder = self.repos.get(f"{request.match_info['org']}/{request.match_info['name']}")
        if folder is None:
            return web.json_response({"error": "Repository not found"}, status=404,
                                     headers={"X-Error-Code": "RepoNotFound"})
        entries = []
        for p in sorted(folder.rglob("*")):
            rel = p.relative_to(folder).as_posix()
            if p.is_dir():
                entries.append({"type": "directory", "oid": _oid(rel.encode()), "path": rel})
            else:
                entries.append({"type": "file", "oid": _oid(p.read_bytes()), "size": p.stat().st_size, "path": rel})
        return web.json_response(entries)

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        path = self._file(request)
        if path is None:
            return web.Response(status=404, headers={"X-Error-Code": "EntryNotFound"})
        data = path.read_bytes()
        headers = {"ETag": f'"{_oid(data)}"', "X-Repo-Commit": COMMIT, "Content-Length": str(len(data)),
                   "Accept-Ranges": "bytes"}
        if request.method == "HEAD":
            return web.Response(headers=headers)
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        chunk = 64 * 1024
        for i in range(0, len(data), chunk):
            await resp.write(data[i:i + chunk])
            if self.bytes_per_s:
                await asyncio.sleep(chunk / self.bytes_per_s)
        await resp.write_eof()
        return resp

    async def front(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path))
        return web.Response()

    async def harnesses(self, request: web.Request) -> web.Response:
        return web.json_response({"standardEnvVars": [], "harnesses": {}})

    async def other(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path))
        self.unknown.append(f"{request.method} {request.path_qs}")
        return web.Response(status=404)

    # --- running on its own thread (the pool and the fetch command are other processes) ---

    def start(self) -> FakeHub:
        threading.Thread(target=self._serve, daemon=True).start()
        assert self._ready.wait(10), "the fake hub did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def _serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_get("/api/models/{org}/{name}/tree/{revision}", self.tree)
        app.router.add_get("/api/agent-harnesses", self.harnesses)
        app.router.add_route("HEAD", "/", self.front)
        app.router.add_route("HEAD", "/{org}/{name}/resolve/{revision}/{path:.+}", self.resolve)
        app.router.add_get("/{org}/{name}/resolve/{revision}/{path:.+}", self.resolve, allow_head=False)
        app.router.add_route("*", "/{tail:.*}", self.other)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()


def _oid(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()
