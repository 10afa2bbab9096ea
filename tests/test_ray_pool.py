"""The pool on Ray Serve (``[pool] backend = "ray"``): a local Ray instance on the CPU, two replicas, tiny models
(the built-in LLM among them, and the safety checker, which every replica holds).

One ``python -m gpu_pool`` for the whole module (starting Ray costs half a minute), in its own process
group so that nothing of Ray outlives the module. The tests run in order: the kill test leaves a
restarted replica, the hot-model test a copy of Text2Image.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import jsonschema
import openai
import pytest
from PIL import Image

pytest.importorskip("ray", reason="ray[serve] is not installed: the ray extra in pyproject.toml "
                                  "(./scripts/test installs it; ./scripts/run --ray for the bot)")

from bot.adapters.discord_bot import DiscordBot  # noqa: E402
from core import local_llm  # noqa: E402
from core.pool_client import PoolClient  # noqa: E402
from core.tools import BY_NAME  # noqa: E402
from gpu_pool.protocol import UNAVAILABLE, JobRequest, RawImage  # noqa: E402
from testkit.pool import ray_on_cpu, start_pool_with, stop_pool  # noqa: E402
from tests.test_agent import RecordingReply, photo, turn  # noqa: E402
from tests.fakes.discord_payloads import CHANNEL_ID  # noqa: E402
from tests.fakes.openai_server import text_of  # noqa: E402
from tests.test_discord import ANSWER, discord_config, fake, mention, with_files  # noqa: E402, F401

pytestmark = [pytest.mark.slow, pytest.mark.ray]
IMG = RawImage.from_pil(Image.open(io.BytesIO(photo().data)).convert("RGB"))


def ray_config(folder: Path, tiny: Path) -> Path:
    path = folder / "config.toml"
    path.write_text(f"""
[llm]
base_url = "http://127.0.0.1:9/v1"
model = "fake-model"

[pool]
socket = "pool.sock"
sd_base = "{tiny}/sd15"
backend = "ray"

{ray_on_cpu()}
[storage]
data_dir = "data"

[limits]
working_size = 64
max_output_size = 256
max_steps = 50

[models.Text2Image]
device = "cpu"
source = "{tiny}/sd15"

[models.ImageCaptioning]
device = "cpu"
source = "{tiny}/blip-caption"

[models.LLM]
device = "cpu"
source = "{tiny}/llm"

[models.SafetyChecker]
device = "cpu"
source = "{tiny}/safety-flags-none"
""")
    return path


def _group(pgid: int) -> list[int]:
    """The processes in a process group (Ray's own processes stay in the group of the pool that started them)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


@pytest.fixture(scope="module")
def ray_pool(tiny_dir, tmp_path_factory):
    pool = start_pool_with(ray_config(tmp_path_factory.mktemp("ray-pool"), tiny_dir), group=True, timeout=400)
    try:
        yield pool
        pool.proc.terminate()
        pool.proc.wait(60)
        deadline = time.monotonic() + 20
        while _group(pool.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _group(pool.proc.pid)
        assert not left, f"Ray processes left after the pool stopped: {left}\n{pool.log.read_text()[-3000:]}"
    finally:
        stop_pool(pool, 0)  # whatever of Ray is still there


@pytest.fixture
def pool(ray_pool):
    """conftest's ``core`` on the Ray pool."""
    return ray_pool


@pytest.fixture
async def client(ray_pool):
    c = ray_pool.client()
    yield c
    await c.close()


async def replicas(client: PoolClient) -> list[dict]:
    return (await client._call("GET", "/replicas"))["replicas"]


async def holders(client: PoolClient) -> dict[str, set[str]]:
    """Model -> the replicas holding it."""
    out: dict[str, set[str]] = {}
    for r in await replicas(client):
        for m in r["models"]:
            out.setdefault(m, set()).add(r["replica"])
    return out


async def events(client: PoolClient, model: str, params: dict, images=()) -> list:
    return [ev async for ev in client.run(JobRequest(model, params, list(images)))]


# --- routing ------------------------------------------------------------------------------------


async def test_jobs_land_on_the_replica_holding_their_model_with_their_progress(client):
    held = await holders(client)
    assert held.pop("SafetyChecker") == {r["replica"] for r in await replicas(client)}  # on every replica
    assert set(held) == {"Text2Image", "ImageCaptioning", "LLM"}
    assert all(len(r) == 1 for r in held.values()) and held["Text2Image"] != held["ImageCaptioning"]  # one each
    before = {r["replica"]: r for r in await replicas(client)}

    for _ in range(2):
        drawn = await events(client, "Text2Image", {"prompt": "a cat", "steps": 3, "width": 64, "height": 64})
        assert [e.kind for e in drawn] == ["queued", "progress", "progress", "progress", "done"]
        assert drawn[0].position == 0 and [(e.step, e.total) for e in drawn[1:4]] == [(1, 3), (2, 3), (3, 3)]
        assert drawn[-1].images[0].width == 64
        assert [v.flagged for v in drawn[-1].safety] == [False]  # checked on the replica that drew it
        captioned = await events(client, "ImageCaptioning", {}, [IMG])
        assert captioned[-1].kind == "done" and isinstance(captioned[-1].text, str)
        for evs, model in ((drawn, "Text2Image"), (captioned, "ImageCaptioning")):
            replica = evs[-1].job_id.split(":")[0]
            assert {replica} == held[model]

    after = {r["replica"]: r for r in await replicas(client)}
    assert {r: after[r]["jobs"] - before[r]["jobs"] for r in after} == {r: 2 for r in after}
    assert {r: after[r]["warm"] - before[r]["warm"] for r in after} == {r: 2 for r in after}
    assert {r: after[r]["loads"] for r in after} == {r: len(after[r]["models"]) for r in after}  # none loaded twice
    listed = {m.name: m.device for m in await client.models() if m.name != "SafetyChecker"}
    for model, (replica,) in held.items():
        assert listed[model].startswith("cpu of replica " + replica)


# --- the built-in LLM ---------------------------------------------------------------------------


async def test_the_built_in_llm_answers_a_chat_completion_from_its_replica(ray_pool, client, tiny_dir):
    """[llm] base_url = "": the bot's chat reaches [models.LLM] through the pool's /v1 routes, as locally."""
    (holder,) = (await holders(client))["LLM"]
    before = {r["replica"]: r["jobs"] for r in await replicas(client)}
    tool = BY_NAME["caption_image"].schema(["img1", "img2"])
    llm = openai.AsyncOpenAI(api_key="unused", max_retries=0, **local_llm.connection(ray_pool.url))
    try:
        listed = [m.id for m in (await llm.models.list()).data]
        answer = await llm.chat.completions.create(
            model="built-in", messages=[{"role": "user", "content": "what is in img2?"}], tools=[tool],
            tool_choice={"type": "function", "function": {"name": "caption_image"}}, max_tokens=40, seed=0)
    finally:
        await llm.close()
    assert listed == [f"{tiny_dir}/llm"]
    calls = answer.choices[0].message.tool_calls
    assert answer.choices[0].finish_reason == "tool_calls" and calls, answer
    for call in calls:
        assert call.function.name == "caption_image"
        jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])
    assert answer.id.startswith(f"chatcmpl-{holder}-")  # the job id of the replica that holds the LLM
    after = {r["replica"]: r["jobs"] for r in await replicas(client)}
    assert {rid: after[rid] - before[rid] for rid in after} == {rid: int(rid == holder) for rid in after}


# --- faults ------------------------------------------------------------------------------------


async def test_a_replica_killed_mid_job_is_reported_and_serve_brings_it_back(client, core):
    (victim,) = [r for r in await replicas(client) if "Text2Image" in r["models"]]

    class KillOnFirstStep(RecordingReply):
        async def status(self, text):
            await super().status(text)
            if text and "step" in text and not getattr(self, "killed", False):
                self.killed = True
                os.kill(victim["pid"], signal.SIGKILL)

    reply = KillOnFirstStep()
    # 50 steps at 256 px, about 8 s on one CPU thread: the first status (after 1 s) comes well before its end
    # (at 64 px and 10 steps the drawing was done in 0.1 s, and a fast run could finish it before the kill)
    out = await core.direct(turn("/imagine", "discord:channel:9"), reply, "generate_image",
                            {"prompt": "a cat", "width": 256, "height": 256})
    assert reply.killed and reply.text == UNAVAILABLE and out.error and out.images == []

    reply = RecordingReply()  # the next job works at once: another replica loads the model
    out = await core.direct(turn("/imagine", "discord:channel:9"), reply, "generate_image", {"prompt": "a dog"})
    assert out.images == ["img1"] and reply.image_ids == ["img1"]
    kept = [m["content"] for m in core.store.messages("discord:channel:9")]
    assert UNAVAILABLE in kept  # the failure is in the conversation, nothing lost

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # Serve starts a replica in place of the dead one
        now = await replicas(client)
        if len(now) == 2 and victim["replica"] not in {r["replica"] for r in now}:
            break
        await asyncio.sleep(1)
    assert len(now) == 2 and victim["pid"] not in {r["pid"] for r in now}, now


# --- a hot model ---------------------------------------------------------------------------------


async def test_a_hot_model_is_loaded_on_a_second_replica(client):
    """spread_after = 2: with two Text2Image jobs in flight on its replica, the third goes to the other one,
    which loads it too."""
    (holder,) = (await holders(client))["Text2Image"]
    params = {"steps": 4, "width": 64, "height": 64}
    jobs = [asyncio.create_task(events(client, "Text2Image", {"prompt": f"cat {i}", **params})) for i in range(3)]
    done = await asyncio.gather(*jobs)
    assert all(evs[-1].kind == "done" for evs in done)
    ran_on = Counter(evs[-1].job_id.split(":")[0] for evs in done)
    assert len(ran_on) == 2 and ran_on[holder] == 2  # the third job went to the other replica
    assert len((await holders(client))["Text2Image"]) == 2


async def test_reload_reaches_every_replica_and_models_lists_each(client):
    copies = (await holders(client))["Text2Image"]
    before = {r["replica"]: r["reloads"] for r in await replicas(client)}
    reply = await client.reload("Text2Image")
    assert reply["ok"] and reply["message"] == "Reloaded Text2Image.", reply
    listed = [m for m in await client.models() if m.name == "Text2Image"]
    assert len(listed) == 2 and all(m.state == "ready" for m in listed)
    assert {m.device.split()[3] for m in listed} == copies  # "cpu of replica ID (node)"
    assert {r["replica"]: r["reloads"] - before[r["replica"]] for r in await replicas(client)} == {r: 1 for r in copies}
    drawn = await events(client, "Text2Image", {"prompt": "after the reload", "steps": 2})
    assert drawn[-1].kind == "done"


async def checkers(client: PoolClient) -> dict[str, str]:
    """Replica -> the state of its SafetyChecker, as /models lists it."""
    return {m.device.split()[3]: m.state for m in await client.models() if m.name == "SafetyChecker"}


async def test_the_safety_checker_is_on_every_replica_and_unload_load_reload_reach_each(client):
    """The admin's /unload, /load and /reload of the checker reach every replica (the one Serve started in
    place of the killed one too); without it drawn images come back unchecked, and the core withholds them."""
    everyone = {r["replica"] for r in await replicas(client)}
    assert await checkers(client) == {r: "ready" for r in everyone}

    assert (await client.unload("SafetyChecker"))["ok"]
    assert await checkers(client) == {}
    drawn = await events(client, "Text2Image", {"prompt": "unchecked", "steps": 2})
    (verdict,) = drawn[-1].safety
    assert verdict.flagged is None and "SafetyChecker" in verdict.note

    reply = await client.load("SafetyChecker")
    assert reply["ok"] and reply["message"].count("of replica") == 2, reply
    assert await checkers(client) == {r: "ready" for r in everyone}
    before = {r["replica"]: r["reloads"] for r in await replicas(client)}
    assert (await client.reload("SafetyChecker"))["message"] == "Reloaded SafetyChecker."
    after = {r["replica"]: r["reloads"] for r in await replicas(client)}
    assert {r: after[r] - before[r] for r in after} == {r: 1 for r in everyone}
    drawn = await events(client, "Text2Image", {"prompt": "checked again", "steps": 2})
    assert [v.flagged for v in drawn[-1].safety] == [False]


# --- the bot, unchanged, on Ray --------------------------------------------------------------------


async def test_discord_mention_with_an_image_is_answered_with_a_drawing(fake, core, llm_server, monkeypatch):
    monkeypatch.setenv("DISCORD_TOKEN_FOR_TESTS", fake.token)
    bot = DiscordBot(core, discord_config(core), guild_ready_timeout=0.05)
    await bot.start()
    try:
        llm_server.on(user="draw one like it").call("generate_image", {"prompt": "a red house"})
        llm_server.on(after_tool="generate_image").reply("Here it is: img2")
        att = fake.add_file(photo().data, "house.jpg", "image/jpeg")
        await fake.push("MESSAGE_CREATE", mention(fake, "draw one like it", attachments=[att]))
        answer = await fake.wait_for_request("POST", ANSWER, where=with_files, timeout=60)
        assert answer.content == "Here it is: img2" and [f.filename for f in answer.files] == ["img2.png"]
        said = text_of(llm_server.requests[0]["messages"][1]["content"])  # the text beside the image parts
        assert said.startswith('draw one like it\n[uploaded img1 "house.jpg"')
        session = "discord:channel:" + answer.path.split("/")[2]
        ran = {(j["model"], j["state"]) for j in core.store.db["jobs"].rows_where("session = ?", [session])}
        assert ran == {("ImageCaptioning", "done"), ("Text2Image", "done")}  # the upload was captioned, on Ray
        for status in fake.matching("POST", ANSWER, where=lambda r: not r.files and r.content != answer.content):
            await fake.wait_for_request("DELETE", rf"^/channels/{CHANNEL_ID}/messages/{status.response['id']}$")
    finally:
        await bot.close()
