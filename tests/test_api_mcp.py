"""The pool's MCP server (``[api]``, gpu_pool/api/mcp_server.py) through the ``mcp`` SDK's own client: in memory
(``Client(server)``, the server built here over the pool process's job protocol) and over streamable HTTP at
the listener's ``/mcp`` with a bearer key; and ``vchat-mcp`` over stdio. Tiny models in one pool process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import subprocess
import sys
import time

import aiohttp
import psutil
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from PIL import Image

import settings
from core.pool_client import PoolClient
from gpu_pool.api import mcp_server
from gpu_pool.api.keys import ApiKey, Keys, load_keys
from gpu_pool.api.service import Service
from gpu_pool.protocol import JobRequest
from testkit.api import ENV_KEYS, api_config, start_api_pool
from testkit.images import house, png_bytes
from testkit.pool import child_env, stop_pool

TOOLS = {"generate_image", "edit_image", "caption_image", "answer_question", "detect_objects", "segment_object",
         "remove_background", "upscale_image", "list_models"}
KEYS_FILE = '[keys.tiny]\nkey = "sk-tiny-0123456789"\nimages_per_day = 1\n'
LONG_STEPS = 400  # a job that runs for many seconds on the CPU, to cancel


@pytest.fixture(scope="module")
def pool(tiny_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mcp-pool")
    (folder / "keys.toml").write_text(KEYS_FILE)
    p = start_api_pool(api_config(folder, keys_file="keys.toml", max_steps=LONG_STEPS))
    yield p
    stop_pool(p)


def config(pool) -> settings.Config:
    return settings.load(pool.config, env_check=False)


@pytest.fixture
async def jobs(pool):
    """The pool's job protocol (core's client), as the in-memory server's pool."""
    c = PoolClient(pool.url)
    yield c
    await c.close()


def in_memory(pool, jobs, key: str = "alice") -> Client:
    cfg = config(pool)
    keys = Keys(load_keys(cfg.api, {cfg.api.keys_env: ",".join(f"{n}={k}" for n, k in ENV_KEYS.items())}))
    return Client(mcp_server.build(Service(lambda: jobs, cfg, keys), local_key=keys.keys[key]))


def over_http(pool, key: str = ENV_KEYS["alice"], mode: str = "auto") -> Client:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    return Client(streamable_http_client(f"{config(pool).api.url}/mcp", http_client=http), mode=mode)


def b64(img: Image.Image) -> str:
    return base64.b64encode(png_bytes(img)).decode()


def image_of(result) -> Image.Image:
    block = next(c for c in result.content if c.type == "image")
    assert block.mime_type == "image/png"
    return Image.open(io.BytesIO(base64.b64decode(block.data)))


def text_of(result) -> str:
    return " ".join(c.text for c in result.content if c.type == "text")


async def test_in_memory_every_tool_answers(pool, jobs):
    async with in_memory(pool, jobs) as client:
        assert {t.name for t in (await client.list_tools()).tools} == TOOLS
        steps = []

        async def progress(done, total, message):
            steps.append((done, total))

        r = await client.call_tool("generate_image", {"prompt": "a red house", "width": 64, "height": 64,
                                                      "steps": 3}, progress_callback=progress)
        assert not r.is_error, text_of(r)
        assert image_of(r).size == (64, 64)
        assert steps == [(1, 3), (2, 3), (3, 3)]  # one notification per diffusion step

        photo, other = b64(house()), b64(house(sky=(250, 200, 120)))
        r = await client.call_tool("edit_image", {"images": [photo, other], "prompt": "make it winter"})
        assert not r.is_error, text_of(r)
        assert [c.type for c in r.content] == ["image", "image", "text"]
        r = await client.call_tool("caption_image", {"image": photo})
        assert not r.is_error and text_of(r)
        r = await client.call_tool("answer_question", {"image": photo, "question": "what colour is the roof?"})
        assert not r.is_error and text_of(r)
        r = await client.call_tool("detect_objects", {"image": photo, "object": "the roof"})
        assert not r.is_error and image_of(r).size == (96, 64) and "box(es) for 'the roof'" in text_of(r)
        r = await client.call_tool("upscale_image", {"image": b64(house(size=(64, 32)))})
        assert not r.is_error and image_of(r).size == (128, 64)
        r = await client.call_tool("list_models", {})
        assert "Text2Image: ready on cpu" in text_of(r)
        # the random tiny detector finds nothing in the picture: a readable tool error, not a crash
        for tool in ("segment_object", "remove_background"):
            args = {"image": photo, "object": "the roof"} if tool == "segment_object" else {"image": photo}
            r = await client.call_tool(tool, args)
            assert (r.is_error and "Could not find" in text_of(r)) or image_of(r).size == (96, 64), text_of(r)


async def test_errors_are_readable_tool_errors(pool, jobs):
    async with in_memory(pool, jobs) as client:
        r = await client.call_tool("caption_image", {"image": base64.b64encode(b"not a picture").decode()})
        assert r.is_error and "not an image this server can read" in text_of(r)
        r = await client.call_tool("generate_image", {"prompt": "a house", "steps": LONG_STEPS + 1})
        assert r.is_error and "'steps' must be between 1 and 400" in text_of(r)


async def test_over_http_with_a_key_and_progress(pool):
    for mode in ("auto", "legacy"):  # protocol 2026-07-28, and the initialize handshake
        async with over_http(pool, mode=mode) as client:
            assert {t.name for t in (await client.list_tools()).tools} == TOOLS
            steps = []

            async def progress(done, total, message, steps=steps):
                steps.append((done, total))

            r = await client.call_tool("generate_image", {"prompt": "a red house", "width": 64, "height": 64,
                                                          "steps": 2}, progress_callback=progress)
            assert not r.is_error, text_of(r)
            assert image_of(r).size == (64, 64)
            assert steps == [(1, 2), (2, 2)], mode


async def test_over_http_a_bad_key_is_refused_and_quotas_apply(pool):
    with pytest.raises(Exception):  # noqa: B017 - the SDK shows the 401 only as a generic error
        async with over_http(pool, key="sk-wrong-0123456789") as client:
            await client.list_tools()
    async with aiohttp.ClientSession() as http, http.post(  # what it got: the first request refused, saying why
            f"{config(pool).api.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"Authorization": "Bearer sk-wrong-0123456789",
                     "Accept": "application/json, text/event-stream"}) as got:
        status, body = got.status, await got.json()
    assert status == 401 and body["error"]["message"] == "That API key is not valid here."
    async with over_http(pool, key="sk-tiny-0123456789") as client:  # images_per_day = 1
        r = await client.call_tool("generate_image", {"prompt": "a house", "width": 64, "height": 64, "steps": 1})
        assert not r.is_error, text_of(r)
        r = await client.call_tool("generate_image", {"prompt": "a house", "width": 64, "height": 64, "steps": 1})
        assert r.is_error and "Daily quota" in text_of(r) and "Try again after midnight UTC" in text_of(r)


async def seconds_until_free(jobs: PoolClient) -> float:
    """Until the device is free: a new job is queued with nothing ahead of it (and done)."""
    started, deadline = time.monotonic(), time.monotonic() + 30
    while True:
        events = [ev async for ev in jobs.run(JobRequest("Text2Image", {"prompt": "x", "steps": 1, "width": 64,
                                                                        "height": 64}))]
        queued = [ev.position for ev in events if ev.kind == "queued"]
        if queued == [0]:
            assert events[-1].kind == "done"
            return time.monotonic() - started
        assert time.monotonic() < deadline, f"the device is still busy: {queued}"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("how", ["in_memory", "http"])
async def test_a_cancelled_call_cancels_the_pool_job(pool, jobs, how):
    cancelled_before = pool.log.read_text().count("client left; cancelled it")
    client = in_memory(pool, jobs) if how == "in_memory" else over_http(pool)
    async with client:
        seen: list[float] = []
        three = asyncio.Event()

        async def progress(done, total, message):
            seen.append(time.monotonic())
            if len(seen) == 3:
                three.set()

        call = asyncio.create_task(client.call_tool(
            "generate_image", {"prompt": "a house", "width": 256, "height": 256, "steps": LONG_STEPS},
            progress_callback=progress))
        await asyncio.wait_for(three.wait(), 60)  # running on the device now
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    left_to_run = (LONG_STEPS - 3) * (seen[2] - seen[0]) / 2  # what the job had left, at its pace so far
    took = await seconds_until_free(jobs)
    assert took < left_to_run / 2, f"the device was free after {took:.1f} s; the job had {left_to_run:.1f} s left"
    assert pool.log.read_text().count("client left; cancelled it") == cancelled_before + 1


def stdio_relays() -> list[psutil.Process]:
    """This test process's vchat-mcp children (the stdio client spawned them)."""
    return [p for p in psutil.Process().children(recursive=True)
            if "gpu_pool.api.mcp_stdio" in " ".join(p.cmdline())]


async def test_stdio_entry_point_relays_to_the_listener(pool):
    env = child_env(VCHAT_API_KEY=ENV_KEYS["bob"])
    params = StdioServerParameters(command=sys.executable, args=["-m", "gpu_pool.api.mcp_stdio", "--url",
                                                                 f"{config(pool).api.url}/mcp"], env=env)
    relays: list[psutil.Process] = []
    try:
        async with Client(params) as client:
            relays = stdio_relays()
            assert len(relays) == 1
            assert {t.name for t in (await client.list_tools()).tools} == TOOLS
            steps = []

            async def progress(done, total, message):
                steps.append((done, total))

            r = await client.call_tool("generate_image", {"prompt": "a house", "width": 64, "height": 64,
                                                          "steps": 2}, progress_callback=progress)
            assert not r.is_error, text_of(r)
            assert image_of(r).size == (64, 64)
            assert steps == [(1, 2), (2, 2)]  # relayed from the listener
            r = await client.call_tool("caption_image", {"image": "bm90IGFuIGltYWdl"})
            assert r.is_error and "not an image this server can read" in text_of(r)
        psutil.wait_procs(relays, timeout=10)
        assert not [p for p in relays if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        for p in relays:  # by PID, whatever happened above
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


def test_stdio_entry_point_without_a_key_says_what_to_set():
    env = {k: v for k, v in child_env().items() if k != "VCHAT_API_KEY"}
    done = subprocess.run([sys.executable, "-m", "gpu_pool.api.mcp_stdio"], env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert "set VCHAT_API_KEY to your key for the pool's listener" in done.stderr


def test_api_key_from_the_environment_never_the_config(pool):
    cfg = config(pool)
    keys = load_keys(cfg.api, {cfg.api.keys_env: "carol=sk-carol-0123456789"})
    assert keys["carol"] == ApiKey("carol", "sk-carol-0123456789", cfg.api.requests_per_minute,
                                   cfg.api.images_per_day)
    assert keys["tiny"].images_per_day == 1  # from keys_file
    assert "sk-" not in cfg.path.read_text()
