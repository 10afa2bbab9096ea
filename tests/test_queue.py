"""Issue 24: the queue you can see, Cancel, and /imagine's options, end to end on both platforms.

The real discord.py and slack-bolt clients against the loopback fakes, the real Core, and a pool of its
own: the tiny Text2Image with up to 500 steps (a job long enough to cancel on any machine) and the
safety checker. A drawing of 2 steps first gives the pool its timings, so the queue has ETAs.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import time

import pytest
from PIL import Image

import settings
from bench.harness import drawing_config
from bot.adapters.discord_bot import DiscordBot
from bot.adapters.slack_bot import SlackBot
from core.inflight import NOT_YOURS, OVER
from testkit.core import close_core, make_core
from testkit.pool import start_pool_with, stop_pool
from tests.fakes.discord_payloads import ADMINISTRATOR, APP_ID, BOT_ID, EPHEMERAL, message, option, user
from tests.fakes.discord_server import FakeDiscord, Request
from tests.fakes.logged_errors import LoggedErrors
from tests.fakes.slack_payloads import BOT_USER, mention
from tests.fakes.slack_server import Call, FakeSlack
from testkit.waiting import until

LONG = 500  # steps: never finished here, always cancelled (PNDM breaks at 1000: it would ask for timestep 1000)
# The long drawings' size: at 128 px 500 steps take about 20 s here, long enough for every status to take its
# turn in the workspace's edit budget (Slack: one edit each 1.5 s) while they run; at 64 px they took 5 s, and
# the waiting request's "3 job(s) ahead" was never due before the first drawing ended.
SIZE = 128
TOKEN_ENV = "DISCORD_TOKEN_FOR_QUEUE_TESTS"
ALICE, BOB, CAROL, DAVE, ADMIN = (user(str(60 + i), n) for i, n in enumerate(("alice", "bob", "carol", "dave",
                                                                               "admin")))
CHANNELS = {"alice": "3201", "bob": "3202", "carol": "3203", "dave": "3204"}  # one conversation each


@pytest.fixture(scope="module")
def slow_pool(tiny_dir, tmp_path_factory):
    # one job at a time: the queue's order and cancels as users see them (batches: tests/test_batching.py)
    pool = start_pool_with(drawing_config(tmp_path_factory.mktemp("queue-pool"), SIZE, LONG, max_batch=1))
    yield pool
    stop_pool(pool)


@pytest.fixture
async def core(slow_pool, tmp_path, llm_server):
    c = make_core(slow_pool, tmp_path, llm_server)
    yield c
    await close_core(c)


async def pool_stopped(pool, job_id: str) -> int:
    """The step the pool says (in its log) it stopped the cancelled job ``job_id`` at."""
    said = re.compile(rf"job {job_id} \(Text2Image\) cancelled at step (\d+) of {LONG}\n")
    return int((await until(lambda: said.search(pool.log.read_text()), timeout=10)).group(1))


async def drain(core) -> None:
    """Cancel whatever is left in the pool (after a failure: the long drawings would hold the teardown)."""
    for job in await core.pool.queue():
        await core.pool.cancel(job.job_id)


async def in_pool(core, n: int) -> list:
    """The pool's queue once it holds ``n`` jobs."""
    async def holds():
        jobs = await core.pool.queue()
        return jobs if len(jobs) == n else None
    return await until(holds)


def running_for(core, name: str):
    """An async predicate: the pool's running job is ``name``'s."""
    async def check():
        jobs = await core.pool.queue()
        owners = [core.requests.owner(j.job_id) for j in jobs if j.state == "running"]
        return any(o is not None and o.user_name.lower() == name for o in owners)
    return check


def size_of(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def wide(size: tuple[int, int]) -> bool:
    """16:9 within the 8-px rounding of each side."""
    width, height = size
    return width > height and abs(width * 9 / 16 - height) <= 8


# --- Discord ------------------------------------------------------------------------------------


@pytest.fixture
async def discord(monkeypatch):
    async with FakeDiscord() as fake:
        for channel in CHANNELS.values():
            fake.add_channel(channel)
        fake.patch(monkeypatch)
        monkeypatch.setenv(TOKEN_ENV, fake.token)
        yield fake


@pytest.fixture
async def discord_bot(core, discord):
    config = dataclasses.replace(core.config, discord=settings.DiscordConfig(True, TOKEN_ENV, ()))
    bot = DiscordBot(core, config, guild_ready_timeout=0.05)
    await bot.start()
    yield bot
    await drain(core)
    await bot.idle()
    await bot.close()


async def imagine(fake: FakeDiscord, who: dict, prompt: str, steps: int, **more) -> dict:
    options = [option("prompt", prompt), option("steps", steps, 4), *(option(k, v) for k, v in more.items())]
    asked = fake.interaction("imagine", options, author=who, channel_id=CHANNELS[who["username"]])
    await fake.push("INTERACTION_CREATE", asked)
    return asked


async def followup(fake: FakeDiscord, asked: dict, where=None, timeout: float = 60) -> Request:
    return await fake.wait_for_request("POST", rf"^/webhooks/{APP_ID}/{asked['token']}$", where=where,
                                       timeout=timeout)


async def stepping(fake: FakeDiscord, asked: dict) -> None:
    """Until the progress message of a slash command shows its job's steps (it runs in the pool, past step 0)."""
    await fake.wait_for_request("PATCH", rf"^/webhooks/{APP_ID}/{asked['token']}/messages/",
                                where=lambda r: "step" in (r.content or ""), timeout=60)


async def cancel_button(fake: FakeDiscord, asked: dict) -> tuple[dict, str]:
    """The progress message of a slash command (its edited "thinking…" response) and its Cancel button."""
    edited = await fake.wait_for_request("PATCH", rf"^/webhooks/{APP_ID}/{asked['token']}/messages/",
                                         where=lambda r: bool((r.json or {}).get("components")), timeout=60)
    (button,) = [b for row in edited.response["components"] for b in row["components"]]
    assert button["label"] == "Cancel" and button["custom_id"].startswith("vc:cancel:")
    return edited.response, button["custom_id"]


async def press(fake: FakeDiscord, message: dict, custom_id: str, who: dict, permissions: int = 0) -> Request:
    pressed = fake.press(message, custom_id, author=who, permissions=permissions)
    await fake.push("INTERACTION_CREATE", pressed)
    return await fake.answered(pressed)


async def ephemeral(fake: FakeDiscord, asked: dict) -> str:
    said = await followup(fake, asked)
    assert said.flags & EPHEMERAL
    return said.content


async def test_discord_queue_cancel_and_a_wide_drawing(discord, discord_bot, core, slow_pool):
    fake = discord
    warm = await imagine(fake, DAVE, "a warm-up", 2)  # the pool's first timings of Text2Image
    assert (await followup(fake, warm, where=lambda r: bool(r.files))).files

    asked = {}
    for who in (ALICE, BOB, CAROL):  # three long drawings, one conversation each: they queue in the pool
        asked[who["username"]] = await imagine(fake, who, f"a long one for {who['username']}", LONG)
        await in_pool(core, len(asked))
    asked["dave"] = await imagine(fake, DAVE, "a wide forest", 2, aspect="16:9")
    await in_pool(core, 4)
    await until(running_for(core, "alice"))
    await stepping(fake, asked["alice"])

    where = fake.interaction("queue", author=DAVE, channel_id=CHANNELS["dave"])
    await fake.push("INTERACTION_CREATE", where)
    lines = (await ephemeral(fake, where)).splitlines()
    assert lines[0].startswith("Your request here (Text2Image) is 4th in line, 3 job(s) ahead of it, done in about ")
    assert lines[1] == "Ahead of it:"
    assert lines[2].startswith("1. Text2Image for Alice: running, step ") and f"/{LONG}, about " in lines[2]
    assert lines[3].startswith("2. Text2Image for Bob: waiting, done in about ")
    assert lines[4].startswith("3. Text2Image for Carol: waiting, done in about ")
    dave_status = await fake.wait_for_request("PATCH", rf"^/webhooks/{APP_ID}/{asked['dave']['token']}/messages/",
                                              where=lambda r: "3 job(s) ahead" in (r.content or ""), timeout=30)
    assert "done in about" in dave_status.content  # progress messages show the ETA too

    # alice cancels her running drawing: it stops at its next step, bob's starts, her conversation says so
    message, custom_id = await cancel_button(fake, asked["alice"])
    (job_id,) = core.requests.of("discord", ALICE["id"])[0].jobs
    pressed_at = time.monotonic()
    assert (await press(fake, message, custom_id, ALICE)).json == {"type": 6}
    said = await followup(fake, asked["alice"], where=lambda r: (r.content or "").startswith("Cancelled"))
    assert said.at - pressed_at < 2.0
    step = int(said.content.removeprefix("Cancelled at step ").split(" of ")[0])
    assert said.content == f"Cancelled at step {step} of {LONG}." and step < LONG
    await until(running_for(core, "bob"))  # the device went to the next job
    assert await pool_stopped(slow_pool, job_id) < LONG  # the pool's own word: stopped before its last step
    (row,) = [r for r in core.store.db["jobs"].rows if r["user"] == ALICE["id"]]
    assert (row["state"], row["message"]) == ("cancelled", f"cancelled at step {step} of {LONG}")
    await until(lambda: not core.requests.of("discord", ALICE["id"]))
    again = await press(fake, message, custom_id, ALICE)  # a second press: told, to the presser alone
    assert again.json["type"] == 4 and again.json["data"]["flags"] & EPHEMERAL
    assert again.json["data"]["content"] == OVER

    # bob's drawing: carol may not cancel it, an admin may
    await stepping(fake, asked["bob"])
    message, custom_id = await cancel_button(fake, asked["bob"])
    refused = await press(fake, message, custom_id, CAROL)
    assert refused.json["data"]["content"] == NOT_YOURS.format(owner="Bob")
    assert (await press(fake, message, custom_id, ADMIN, permissions=ADMINISTRATOR)).json == {"type": 6}
    said = await followup(fake, asked["bob"], where=lambda r: (r.content or "").startswith("Cancelled"))
    assert said.content.startswith(f"Cancelled by <@{ADMIN['id']}> at step ")

    # carol's, still waiting in the pool, with /cancel
    stop = fake.interaction("cancel", author=CAROL, channel_id=CHANNELS["carol"])
    await fake.push("INTERACTION_CREATE", stop)
    assert (await ephemeral(fake, stop)).startswith("Cancelling 1 request(s) of yours here")
    said = await followup(fake, asked["carol"], where=lambda r: (r.content or "").startswith("Cancelled"))
    assert said.content == "Cancelled."

    # then dave's drawing runs: 16:9
    drawn = await followup(fake, asked["dave"], where=lambda r: bool(r.files))
    assert wide(size_of(drawn.files[0].data)), size_of(drawn.files[0].data)
    assert [r["state"] for r in core.store.db["jobs"].rows] == ["done", "cancelled", "cancelled", "cancelled", "done"]


async def test_discord_autocompletes_the_drawing_model_within_1_5_s(discord, discord_bot):
    fake = discord
    typing = fake.autocomplete("imagine", [option("prompt", "a cat"), option("model", "text")], "model", author=DAVE)
    sent = await fake.push("INTERACTION_CREATE", typing)
    answer = await fake.answered(typing)
    assert answer.at - sent < 1.5
    assert answer.json == {"type": 8, "data": {"choices": [{"name": "Text2Image", "value": "Text2Image"}]}}
    nothing = fake.autocomplete("imagine", [option("prompt", "a cat"), option("model", "zzz")], "model", author=DAVE)
    await fake.push("INTERACTION_CREATE", nothing)
    assert (await fake.answered(nothing)).json == {"type": 8, "data": {"choices": []}}


# --- Slack --------------------------------------------------------------------------------------


@pytest.fixture
async def slack(monkeypatch):
    async with FakeSlack() as fake:
        monkeypatch.setenv("SLACK_BOT_TOKEN", fake.bot_token)
        monkeypatch.setenv("SLACK_APP_TOKEN", fake.app_token)
        yield fake


@pytest.fixture
async def slack_bot(core, slack):
    with LoggedErrors("slack_bolt", "slack_sdk", "bot.adapters.slack_bot") as errors:
        bot = SlackBot(core, core.config, base_url=slack.base_url, host="127.0.0.1")
        await bot.start()
        await slack.connected()
        try:
            yield bot
            await drain(core)
            await bot.idle()
            await slack.check()
        finally:
            await bot.close()
    errors.assert_none()


def cancel_of(slack: FakeSlack, channel: str) -> tuple[Call, str]:
    """The progress message in ``channel`` and the action_id of its Cancel button."""
    def posted():
        return [c for c in slack.called("chat.postMessage", lambda c: c["channel"] == channel and c.get("blocks"))
                if "vc:cancel:" in json.dumps(c["blocks"])]
    found = posted()
    assert found, f"no progress message with a Cancel button in {channel}"
    blocks = found[0]["blocks"]
    blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
    (button,) = blocks[-1]["elements"]
    assert button["text"]["text"] == "Cancel"
    return found[0], button["action_id"]


async def stepping_in(slack: FakeSlack, channel: str) -> None:
    """Until the progress message in ``channel`` shows its job's steps (it runs in the pool, past step 0)."""
    await until(lambda: any("step" in c["text"] for c in slack.called("chat.update", lambda c: c["channel"] == channel)
                            ))


def said_in(channel: str, start: str):
    return lambda c: c["channel"] == channel and not c.get("blocks") and c["text"].startswith(start)


async def test_slack_queue_cancel_and_a_wide_drawing(slack, slack_bot, core, slow_pool):
    await slack.push_command("/imagine", "a warm-up --steps 2", user="U4", channel="C4")
    await slack.wait_for("files.completeUploadExternal", timeout=60)
    for n, who in enumerate(("U1", "U2", "U3"), 1):
        await slack.push_command("/imagine", f"a long one --steps {LONG}", user=who, channel=f"C{n}")
        await in_pool(core, n)
    await slack.push_command("/imagine", "a wide forest --ar 16:9 --steps 2", user="U4", channel="C4")
    await in_pool(core, 4)
    await until(running_for(core, "u1"))

    await slack.push_command("/queue", "", user="U4", channel="C4")
    answer = (await slack.wait_for("response_url", timeout=20))["text"]
    lines = answer.splitlines()
    assert lines[0].startswith("Your request here (Text2Image) is 4th in line, 3 job(s) ahead of it, done in about ")
    assert [line.split(":")[0] for line in lines[2:]] == ["1. Text2Image for u1", "2. Text2Image for u2",
                                                          "3. Text2Image for u3"]
    def dave_status():  # posted or edited (as the status's pace allows), with the Cancel button
        return [c for m in ("chat.postMessage", "chat.update") for c in slack.called(m, lambda c: c["channel"] == "C4")
                if "3 job(s) ahead" in c["text"] and "vc:cancel:" in json.dumps(c.get("blocks"))]
    # progress messages show the ETA too (edits share the workspace's budget with the running job's steps)
    try:
        shown = await until(dave_status, timeout=60)
    except AssertionError:
        c4 = [(m, c["text"], "vc:cancel:" in json.dumps(c.get("blocks"))) for m in ("chat.postMessage", "chat.update")
              for c in slack.called(m, lambda c: c["channel"] == "C4")]
        raise AssertionError(f"no status in C4 says 3 job(s) ahead with a Cancel button within 60 s; C4 got {c4}, "
                             f"429s: {[c.method for c in slack.rate_limited]}") from None
    assert "done in about" in shown[0]["text"]

    await stepping_in(slack, "C1")
    posted, action_id = cancel_of(slack, "C1")
    (job_id,) = core.requests.of("slack", "U1")[0].jobs
    pressed_at = time.monotonic()
    await slack.wait_acked(await slack.press(posted, action_id, user="U1"))
    said = await slack.wait_for("chat.postMessage", said_in("C1", "Cancelled"), timeout=10)
    assert said.at - pressed_at < 2.0
    step = int(said["text"].removeprefix("Cancelled at step ").split(" of ")[0])
    assert said["text"] == f"Cancelled at step {step} of {LONG}." and step < LONG
    await until(running_for(core, "u2"))
    assert await pool_stopped(slow_pool, job_id) < LONG
    await until(lambda: not core.requests.of("slack", "U1"))
    await slack.press(posted, action_id, user="U1")  # twice: told, to the presser alone
    again = await slack.wait_for("chat.postEphemeral", lambda c: c["user"] == "U1")
    assert again["text"] == OVER

    posted, action_id = cancel_of(slack, "C2")
    await slack.press(posted, action_id, user="U3")
    refused = await slack.wait_for("chat.postEphemeral", lambda c: c["user"] == "U3")
    assert refused["text"] == NOT_YOURS.format(owner="u2")
    await stepping_in(slack, "C2")
    await slack.push_command("/cancel", "", user="U2", channel="C2")
    assert (await slack.wait_for("response_url", lambda c: c["text"].startswith("Cancelling"))).get(
        "response_type") == "ephemeral"
    await slack.wait_for("chat.postMessage", said_in("C2", "Cancelled at step "), timeout=10)
    await slack.push_command("/cancel", "", user="U3", channel="C3")
    await slack.wait_for("chat.postMessage", said_in("C3", "Cancelled."), timeout=10)

    done = await slack.wait_for("files.completeUploadExternal", count=2, timeout=60)
    done = slack.called("files.completeUploadExternal")[1]
    (entry,) = json.loads(done["files"])
    assert done["channel_id"] == "C4" and wide(size_of(slack.uploads[entry["id"]]))


def banner_script(llm_server) -> None:
    """The scripted LLM: offered aspect_ratio with 16:9 among its values, it asks for a 16:9 forest (as a model asked
    for a wide banner does), then answers in words."""
    def offers_aspect(request) -> bool:
        (tool,) = [t for t in request["tools"] if t["function"]["name"] == "generate_image"]
        return "16:9" in tool["function"]["parameters"]["properties"]["aspect_ratio"]["enum"]

    llm_server.on(user="a wide banner of a forest", when=offers_aspect).call(
        "generate_image", {"prompt": "a forest", "aspect_ratio": "16:9"})
    llm_server.on(after_tool="generate_image").reply("Here is your banner: img1")


async def test_a_wide_banner_asked_in_words_is_drawn_wide(slack, slack_bot, core, llm_server):
    """The LLM is offered aspect_ratio; a call with it (as a model asked for a wide banner makes) is honoured."""
    banner_script(llm_server)
    await slack.push_event(mention("C1", "U1", f"<@{BOT_USER}> a wide banner of a forest"))
    done = await slack.wait_for("files.completeUploadExternal", timeout=60)
    (entry,) = json.loads(done["files"])
    assert done["initial_comment"] == "Here is your banner: img1" and wide(size_of(slack.uploads[entry["id"]]))
    assert core.store.image("slack:C1", "img1").made.args["aspect_ratio"] == "16:9"


async def test_a_wide_banner_asked_in_words_on_discord(discord, discord_bot, core, llm_server):
    banner_script(llm_server)
    channel = CHANNELS["alice"]
    await discord.push("MESSAGE_CREATE", message(channel, f"<@{BOT_ID}> a wide banner of a forest", ALICE,
                                                 mentions=[discord.bot_user]))
    done = await discord.wait_for_request("POST", rf"^/channels/{channel}/messages$", where=lambda r: bool(r.files),
                                          timeout=60)
    assert done.content == "Here is your banner: img1" and wide(size_of(done.files[0].data))
    assert core.store.image(f"discord:channel:{channel}", "img1").made.args["aspect_ratio"] == "16:9"
