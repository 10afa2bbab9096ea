"""The pool's one seam: jobs stream through Scheduler.stream only, every route is answered by a Backend, the
job id is one type, a Ray replica reloads through Registry.reload, and the pool says "not loaded" in its own
words (with a code) while the core words it for the chat."""

from __future__ import annotations

import weakref
from collections import Counter

import aiohttp
import pytest
from aiohttp import web

import settings
from core.pool_client import PoolClient
from gpu_pool import server
from gpu_pool.protocol import JobId, JobRequest, RawImage, event_from_frame, read_frame, request_to_frame
from gpu_pool.registry import Registry
from gpu_pool.scheduler import Scheduler
from tests.test_loading import reload_watching, small_config
from tests.test_scheduler import registry_with

IMG = RawImage(64, 64, "RGB", bytes(64 * 64 * 3))


def test_a_job_id_is_its_scheduler_s_id_with_its_replica_s_on_ray():
    assert str(JobId("j7")) == "j7" and JobId.parse("j7") == JobId("j7")
    assert str(JobId("j7", "abc123")) == "abc123:j7" and JobId.parse("abc123:j7") == JobId("j7", "abc123")
    assert JobId.parse("abc123:j7").slug() == "abc123-j7" and JobId.parse("j7").slug() == "j7"


async def test_a_stream_closed_early_cancels_its_job_and_a_finished_one_is_only_forgotten():
    sched = Scheduler(registry_with({"Image2Canny": "cpu"}))
    try:
        running = sched.stream(JobRequest("Image2Canny", {"seconds": 0.2}))
        waiting = sched.stream(JobRequest("Image2Canny", {"seconds": 0.2}))
        assert (await anext(running)).position == 0 and (await anext(waiting)).position == 1
        first, second = sched.jobs.values()
        await waiting.aclose()  # its client left while the job waited: cancelled, out of the queue, forgotten
        assert second.cancel_flag.is_set() and second not in sched.queues["cpu"].pending
        assert list(sched.jobs) == [first.id]
        events = [ev async for ev in running]
        assert events[-1].kind == "done" and not first.cancel_flag.is_set() and not sched.jobs
    finally:
        sched.close()


@pytest.fixture
async def canny_pool(tmp_path):
    """The local pool in this process, with Image2Canny only (no weights), on a unix socket."""
    path = tmp_path / "config.toml"
    path.write_text(f'[pool]\nsocket = "{tmp_path}/pool.sock"\n[storage]\ndata_dir = "{tmp_path}"\n'
                    '[models.Image2Canny]\ndevice = "cpu"\n')
    runner = web.AppRunner(server.make_app(settings.load(path, env_check=False)))
    await runner.setup()
    await web.UnixSite(runner, f"{tmp_path}/pool.sock").start()
    try:
        yield f"unix:{tmp_path}/pool.sock"
    finally:
        await runner.cleanup()


async def raw_call(url: str, method: str, path: str, body: bytes | dict | None = None) -> tuple[int, list]:
    """The pool's own answer, no PoolClient between: (status, the JSON body or the job's events)."""
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=url[len("unix:"):])) as http:
        kw = {"data": body} if isinstance(body, bytes) else {"json": body}
        async with http.request(method, f"http://pool{path}", **kw) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            events = []
            while (frame := await read_frame(resp.content)) is not None:
                events.append(event_from_frame(*frame))
            return resp.status, events


async def test_the_pool_says_not_loaded_with_a_code_and_the_core_says_how_to_load_it(canny_pool):
    # The pool: the model and the cause, a code, no chat command.
    status, events = await raw_call(canny_pool, "POST", "/jobs", request_to_frame(JobRequest("Image2Depth", {}, [IMG])))
    assert status == 200 and [(e.kind, e.code, e.message) for e in events] == [
        ("failed", "not_loaded", "Image2Depth is not loaded on this bot.")]
    status, body = await raw_call(canny_pool, "POST", "/models/unload", {"model": "Image2Depth"})
    assert status == 400 and (body["ok"], body["code"], body["model"], body["message"]) == (
        False, "not_loaded", "Image2Depth", "Image2Depth is not loaded on this bot.")
    assert [m["name"] for m in body["models"]] == ["Image2Canny"]
    status, body = await raw_call(canny_pool, "POST", "/models/load", {"model": "Image2Deph"})
    assert status == 400 and body["message"].startswith("There is no model called Image2Deph. Known models: ")

    # The core: what the chat user reads.
    client = PoolClient(canny_pool)
    try:
        advice = "Image2Depth is not loaded on this bot; an admin can load it with /load Image2Depth."
        assert (await client.result(JobRequest("Image2Depth", {}, [IMG]))).message == advice
        assert (await client.unload("Image2Depth"))["message"] == advice
        done = await client.result(JobRequest("Image2Canny", {}, [IMG]))
        assert done.kind == "done" and JobId.parse(done.job_id) == JobId(done.job_id)  # local ids: no replica
        assert not await client.cancel(done.job_id)  # finished: no such running job
        reply = await client.load("Image2Canny", device="cpu")
        assert reply["ok"] and reply["message"] == "Image2Canny is loaded on cpu (float32)."
    finally:
        await client.close()


async def test_the_job_header_names_the_job_its_events_name(canny_pool):
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=canny_pool[len("unix:"):])) as http:
        frame = request_to_frame(JobRequest("Image2Canny", {}, [IMG]))
        async with http.post("http://pool/jobs", data=frame) as resp:
            first = event_from_frame(*await read_frame(resp.content))
            assert first.kind == "queued" and resp.headers["X-Job-Id"] == first.job_id
    status, body = await raw_call(canny_pool, "GET", "/health")
    assert status == 200 and body["ok"] and "backend" not in body  # the Ray front adds "backend": "ray"


# --- a Ray replica's reload is the registry's ----------------------------------------


def replica_on(registry: Registry):
    """The Ray replica's class with a registry of its own, outside Serve (its admin calls need no cluster)."""
    pytest.importorskip("ray", reason="ray[serve] is not installed")
    from gpu_pool.ray.replica import PoolReplica

    replica = object.__new__(PoolReplica.func_or_class)
    replica.registry, replica.id, replica.node, replica.stats = registry, "r1", "127.0.0.1", Counter()
    return replica


async def test_a_replica_reloads_what_it_holds_through_the_registry_never_two_bases_at_once(tiny_dir, tmp_path):
    """Two SD models and BLIP configured; the replica holds the SD ones. A full reload reloads those two and
    releases every old copy, the shared base too, before the first new load begins (its old copy of the
    reload reset the base first and loaded one model at a time: two bases for a moment)."""
    registry = Registry(small_config(tiny_dir, tmp_path))
    try:
        await registry.load("Text2Image")
        await registry.load("CannyText2Image")
        old = [weakref.ref(m) for e in registry.entries.values() for m in e.model.modules().values()]
        answers = []

        async def reload():
            answers.append(await replica_on(registry).reload("r1", None))

        seen = await reload_watching(registry, None, old, reload)
        [answer] = answers
        assert answer == {"reloaded": ["Text2Image", "CannyText2Image"], "failed": []}
        assert seen == [("CannyText2Image", 0), ("Text2Image", 0)]
        assert set(registry.entries) == {"Text2Image", "CannyText2Image"}  # BLIP is another replica's
        assert {e.state for e in registry.entries.values()} == {"ready"}
        assert await replica_on(registry).reload("other-replica", None) is None  # meant for another one
    finally:
        registry.close()


async def test_a_replica_reload_with_a_broken_config_says_why_and_keeps_its_models(tiny_dir, tmp_path):
    config = small_config(tiny_dir, tmp_path)
    registry = Registry(config)
    try:
        await registry.load("CannyText2Image")
        config.path.write_text(config.path.read_text().replace('device = "cpu"', "device = 'cuda:x'", 1))
        answer = await replica_on(registry).reload("r1", "CannyText2Image")
        assert set(answer) == {"error"} and "'cuda:x' is not valid" in answer["error"]
        assert registry.entries["CannyText2Image"].state == "ready"
    finally:
        registry.close()
