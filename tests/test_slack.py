"""The Slack adapter end to end: real slack-bolt / slack_sdk against a loopback Slack, the real Core,
the tiny-model pool, and the scripted LLM."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import re
import socket
import time

import aiohttp
import pytest
from PIL import Image

from bot.adapters import slack_bot
from bot.adapters.slack_bot import THREADS_NOTE, SlackBot
from bot.adapters.slack_reply import WORKING
from core.engine import HELP
from tests.fakes.logged_errors import LoggedErrors
from tests.fakes.slack_payloads import BOT_USER, dm, event_callback, mention, signed_headers
from tests.fakes.slack_server import Call, FakeSlack
from tests.fakes.openai_server import text_of
from tests.test_agent import image_enum, photo

AT = f"<@{BOT_USER}>"
ADMIN = "UADMIN"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


@pytest.fixture
async def slack():
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
def errors():
    with LoggedErrors("slack_bolt", "slack_sdk", "bot.adapters.slack_bot") as logged:
        yield logged
    logged.assert_none()


@pytest.fixture
async def make_bot(core, slack, errors, monkeypatch):
    """Start a SlackBot on the fake; slack overrides (mode, workspace_admins ...) as keywords."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", slack.bot_token)
    monkeypatch.setenv("SLACK_APP_TOKEN", slack.app_token)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SECRET)
    bots: list[SlackBot] = []

    async def make(**slack_overrides) -> SlackBot:
        cfg = core.config
        slack_cfg = dataclasses.replace(cfg.slack, admin_ids=(ADMIN,), **slack_overrides)
        bot = SlackBot(core, dataclasses.replace(cfg, slack=slack_cfg), base_url=slack.base_url, host="127.0.0.1")
        bots.append(bot)
        await bot.start()
        return bot

    yield make
    await slack.check()  # every envelope acked in time, nothing unimplemented: before the bot goes
    for bot in bots:
        await bot.close()


@pytest.fixture
async def bot(make_bot) -> SlackBot:
    return await make_bot()


# --- helpers ----------------------------------------------------------------------------


def jpeg(sky=(120, 160, 200)) -> bytes:
    return photo(sky).data


def in_thread(channel: str, thread_ts: str | None):
    return lambda c: c.get("channel", c.get("channel_id")) == channel and c.get("thread_ts") == thread_ts


def answer(channel: str, thread_ts: str | None):
    """A posted message that is neither the status line nor the buttons under images."""
    where = in_thread(channel, thread_ts)
    return lambda c: where(c) and c.get("text") != WORKING and not c.get("blocks")


def uploaded_image(slack: FakeSlack, complete: Call) -> Image.Image:
    (entry,) = json.loads(complete["files"])
    return Image.open(io.BytesIO(slack.uploads[entry["id"]]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- mentions, threads, DMs ---------------------------------------------------------------


async def test_mention_with_image_gets_a_threaded_reply_with_the_edited_image(bot, slack, core, llm_server):
    llm_server.on(user="make it winter").call("edit_image", {"image": "img1", "instruction": "make it winter"})
    llm_server.on(after_tool="edit_image").reply("Snowy & cold: img2 <3")
    house = slack.add_file("house.jpg", jpeg(), "image/jpeg")
    event = mention("C1", "U1", f"{AT} make it winter &amp; snowy", files=[house])  # Slack escapes &, <, >
    env = await slack.push_event(event)

    complete = await slack.wait_for("files.completeUploadExternal")
    assert (complete["channel_id"], complete["thread_ts"]) == ("C1", event["ts"])
    assert complete["initial_comment"] == "Snowy &amp; cold: img2 &lt;3"
    assert uploaded_image(slack, complete).size == (64, 40)
    assert [auth for _, auth in slack.downloads] == [f"Bearer {slack.bot_token}"]  # fetched with the bot token
    said = text_of(llm_server.requests[0]["messages"][-1]["content"])  # the text beside the image parts
    assert said.startswith('make it winter & snowy\n[uploaded img1 "house')

    # status: posted in the thread within a second, updated with progress, deleted once answered
    status = slack.called("chat.postMessage", in_thread("C1", event["ts"]))[0]
    assert status["text"] == WORKING and status.at - slack.envelopes[env].sent_at < 1.0
    deleted = await slack.wait_for("chat.delete")
    status_ts = deleted["ts"]
    updates = slack.called("chat.update", lambda c: c["ts"] == status_ts)
    assert updates and any("step" in c["text"] for c in updates)
    assert deleted["channel"] == "C1" and status_ts == status.response["ts"]
    assert (await slack.wait_acked(env)).ack_delay < 3
    assert core.store.image("slack:C1", "img2").operation == "edit_image"


async def test_a_dm_is_a_private_session(bot, slack, core, llm_server):
    await slack.push_event(dm("D2", "U2", "", files=[slack.add_file("me.jpg", jpeg(), "image/jpeg")]))
    got = await slack.wait_for("chat.postMessage", answer("D2", None))
    assert got["text"].startswith("Got img1")
    assert [r.image_id for r in core.store.images("slack:dm:U2")] == ["img1"]

    llm_server.on(user="what do you see").reply("Nothing yet.")
    event = mention("C1", "U2", f"{AT} what do you see?")
    await slack.push_event(event)
    assert (await slack.wait_for("chat.postMessage", answer("C1", event["ts"])))["text"] == "Nothing yet."
    seen_by_llm = json.dumps(llm_server.requests[-1])
    assert "- img1:" not in seen_by_llm and "me.jpg" not in seen_by_llm  # neither the image nor the DM's history
    await slack.push_command("/caption", "img1", user="U2", channel="C1")
    refused = await slack.wait_for("chat.postMessage", answer("C1", None))
    assert "'img1' does not exist in this conversation" in refused["text"]
    assert core.store.images("slack:C1") == []


async def test_a_reply_in_the_bots_thread_continues_the_conversation(bot, slack, core, llm_server):
    llm_server.on(user="what's in this picture").reply("A house under a blue sky.")
    top = mention("C1", "U1", f"{AT} what's in this picture?", files=[slack.add_file("a.jpg", jpeg(), "image/jpeg")])
    await slack.push_event(top)
    said = await slack.wait_for("chat.postMessage", answer("C1", top["ts"]))
    assert said["text"] == "A house under a blue sky."  # answered in a thread under the mention
    assert not slack.called("files.completeUploadExternal")  # without posting the user's own photo back

    llm_server.on(user="make it winter", tools_include="edit_image").call(
        "edit_image", {"image": "img1", "instruction": "make it winter"})
    llm_server.on(after_tool="edit_image").reply("Snowy: img2")
    follow = mention("C1", "U2", f"{AT} make it winter", thread_ts=top["ts"])  # someone replies in that thread
    await slack.push_event(follow)
    done = await slack.wait_for("files.completeUploadExternal", in_thread("C1", top["ts"]))
    assert done["initial_comment"] == "Snowy: img2" and uploaded_image(slack, done).size == (64, 40)
    asked = llm_server.requests[-2]
    assert image_enum(asked, "edit_image") == ["img1"] and "what's in this picture?" in json.dumps(asked)
    assert core.store.image("slack:C1", "img2").parent == "img1"  # one conversation: the channel's
    assert core.store.messages(f"slack:C1:{top['ts']}") == []


async def test_a_thread_people_started_is_its_own_conversation(bot, slack, core):
    await slack.push_event(mention("C1", "U1", AT, files=[slack.add_file("a.jpg", jpeg(), "image/jpeg")]))
    await slack.wait_for("chat.postMessage", lambda c: c["text"].startswith("Got img1"))
    parent = slack.human_message("C1", "U7", "look at my holiday photos")  # no bot in it
    inner = mention("C1", "U7", AT, thread_ts=parent,
                    files=[slack.add_file("b.jpg", jpeg(sky=(10, 20, 30)), "image/jpeg")])
    await slack.push_event(inner)
    said = await slack.wait_for("chat.postMessage", answer("C1", parent))
    assert said["text"].startswith("Got img1")  # the thread counts on its own
    channel, thread = core.store.image("slack:C1", "img1"), core.store.image(f"slack:C1:{parent}", "img1")
    assert channel.sha256 != thread.sha256 and core.store.image("slack:C1", "img2") is None


async def test_a_retried_event_is_answered_once(bot, slack):
    event = dm("D3", "U3", "", files=[slack.add_file("c.jpg", jpeg(), "image/jpeg")])
    first = await slack.push_event(event, event_id="EvRETRY")
    retry = await slack.push_event(event, event_id="EvRETRY", retry_attempt=1)
    await slack.wait_acked(first)
    await slack.wait_acked(retry)
    await slack.wait_for("chat.postMessage", answer("D3", None))
    await bot.idle()
    answers = slack.called("chat.postMessage", answer("D3", None))
    assert [a["text"][:8] for a in answers] == ["Got img1"]
    assert len(slack.called("chat.postMessage", lambda c: c["text"] == WORKING)) == 1
    assert len(slack.downloads) == 1


async def test_bots_edits_and_joins_are_ignored(bot, slack):
    ignored = [dm("D5", "U5", "edited", subtype="message_changed"), dm("D5", "U5", "", subtype="channel_join"),
               dm("D5", "B9", "beep", subtype="bot_message", bot_id="B9"), dm("D5", "U5", "", bot_id="B9")]
    mine = mention("C1", BOT_USER, f"{AT} talking to myself")
    mine["bot_id"] = "B0BOT"
    for event in [*ignored, mine]:
        await slack.wait_acked(await slack.push_event(event))
    await slack.push_event(dm("D5", "U5", "", files=[slack.add_file("e.jpg", jpeg(), "image/jpeg")]))
    await slack.wait_for("chat.postMessage", answer("D5", None))
    await bot.idle()
    assert [c["text"][:8] for c in slack.called("chat.postMessage")] == [WORKING[:8], "Got img1"]


async def test_a_web_page_instead_of_the_file_is_reported_and_nothing_stored(bot, slack, core, errors, caplog):
    page = slack.add_file("house.jpg", jpeg(), "image/jpeg", serve="login_page")
    event = mention("C1", "U1", AT, files=[page])
    with caplog.at_level(logging.WARNING, "bot.adapters.slack_bot"):
        await slack.push_event(event)
        said = await slack.wait_for("chat.postMessage", answer("C1", event["ts"]))
        await bot.idle()
    assert said["text"] == ("I could not read house.jpg as an image. Please send it again; if it keeps failing, "
                            "tell the bot's admins.")  # what the user can do; the cause is for admins
    assert "files:read" in " ".join(r.getMessage() for r in caplog.records)
    assert core.store.images("slack:C1") == [] and core.store.messages("slack:C1") == []
    await slack.push_command("/models", "", user=ADMIN)
    models = await slack.wait_for("response_url")
    assert "Slack: " in models["text"] and "is the files:read scope missing?" in models["text"]


async def test_a_file_over_the_size_limit_is_not_downloaded(bot, slack, core):
    big = slack.add_file("big.png", jpeg(), "image/png")
    big["size"] = core.config.limits.max_upload_bytes + 1
    event = mention("C1", "U1", AT, files=[big])
    await slack.push_event(event)
    said = await slack.wait_for("chat.postMessage", answer("C1", event["ts"]))
    assert said["text"] == "I could not use big.png: it is larger than the 25.0 MiB limit."
    await bot.idle()
    assert slack.downloads == [] and core.store.images("slack:C1") == []


async def test_twenty_concurrent_mentions_are_answered_in_the_right_places(bot, slack, llm_server):
    events = []
    for i in range(20):
        if i % 5 == 0:  # some draw: concurrent jobs and uploads
            llm_server.on(user=re.compile(rf"\bq{i}\b")).call("generate_image", {"prompt": f"thing {i}"})
            llm_server.on(after_tool="generate_image", result_contains=f'"thing {i}"').reply(f"a{i}: img1")
        else:
            llm_server.on(user=re.compile(rf"\bq{i}\b")).reply(f"a{i}")
        thread = slack.human_message("C9", f"U{100 + i}", "a thread") if i % 2 else None  # odd: threads in C9
        events.append(mention("C9" if thread else f"C{100 + i}", f"U{100 + i}", f"{AT} q{i}", thread_ts=thread))
    envs = await asyncio.gather(*(slack.push_event(e) for e in events))
    for env in envs:
        assert (await slack.wait_acked(env)).ack_delay < 3

    async def answered(i: int, e: dict) -> None:
        where = e.get("thread_ts") or e["ts"]
        if i % 5 == 0:
            done = await slack.wait_for("files.completeUploadExternal", in_thread(e["channel"], where), timeout=30)
            assert done["initial_comment"] == f"a{i}: img1" and uploaded_image(slack, done).size == (64, 64)
        else:
            said = await slack.wait_for("chat.postMessage", answer(e["channel"], where), timeout=30)
            assert said["text"] == f"a{i}"

    await asyncio.gather(*(answered(i, e) for i, e in enumerate(events)))
    await bot.idle()
    llm_server.assert_all_used()
    assert len(slack.called("chat.delete")) == 20


# --- slash commands -----------------------------------------------------------------------


async def test_slash_commands(bot, slack, core):
    env = await slack.push_command("/help", "")
    assert (await slack.wait_acked(env)).ack_payload["text"] == HELP + "\n" + THREADS_NOTE
    imagine = "Usage: /imagine PROMPT [--ar 1:1|3:2|2:3|16:9|9:16] [--seed SEED] [--steps STEPS] [--model MODEL]"
    for command, usage in (("/imagine", imagine), ("/caption", "Usage: /caption IMAGE_ID"),
                           ("/edit img1", "Usage: /edit IMAGE_ID [IMAGE_ID...] INSTRUCTION"),
                           ("/unload", "Usage: /unload MODEL"),
                           ("/load", "Usage: /load MODEL [DEVICE]")):
        name, _, text = command.partition(" ")
        env = await slack.push_command(name, text)
        assert (await slack.wait_acked(env)).ack_payload["text"] == usage

    await slack.push_command("/imagine", "a red boat")
    drawn = await slack.wait_for("files.completeUploadExternal")
    assert drawn["channel_id"] == "C1" and "thread_ts" not in drawn.body
    assert drawn["initial_comment"] == 'Drew img1 (64x64) from "a red boat".'
    assert uploaded_image(slack, drawn).size == (64, 64)

    await slack.push_command("/caption", "img1")
    caption = await slack.wait_for("chat.postMessage", answer("C1", None))
    assert caption["text"].startswith("img1 shows: ")

    await slack.push_command("/edit", "img1 make it winter")
    await slack.wait_for("files.completeUploadExternal", count=2)
    edited = slack.called("files.completeUploadExternal")[1]
    assert edited["initial_comment"] == "Made img2 from img1: make it winter."
    assert core.store.image("slack:C1", "img2").parent == "img1"

    # reference images after the image's id need FLUX.2 klein, which this (the seed's) pool has not loaded
    await slack.push_command("/edit", "img2 img1 put the boat from img1 here")
    refused = await slack.wait_for("chat.postMessage", lambda c: "reference images" in c["text"])
    assert refused["text"].startswith("Editing with reference images needs FLUX.2 [klein] (the Klein model), which "
                                      "is not loaded on this bot; an admin can load it with /load Klein.")
    assert [r.image_id for r in core.store.images("slack:C1")] == ["img1", "img2"]

    await slack.push_command("/reset", "")
    reset = await slack.wait_for("response_url")
    assert reset["response_type"] == "in_channel"
    assert reset["text"] == ("Cleared the conversation of <#C1>: I have forgotten its messages and images. "
                             f"({THREADS_NOTE})")  # which conversation, even when typed in a thread
    assert core.store.images("slack:C1") == []
    await bot.idle()
    assert len(slack.called("chat.postMessage", lambda c: c["text"] == WORKING)) == 4
    assert len(slack.called("chat.delete")) == 4


async def test_admin_commands_allowed_and_refused_ephemerally(make_bot, slack):
    await make_bot(workspace_admins=True)
    slack.add_user("UOWNER", is_owner=True)
    slack.add_user("U1")
    asks = ((ADMIN, "/models", ""), ("UOWNER", "/reload", "Image2Canny"), ("U1", "/models", ""),
            ("U1", "/reload", ""), ("U1", "/load", "Text2Image cpu"), ("U1", "/unload", "Text2Image"))
    for n, (user, command, text) in enumerate(asks):
        await slack.push_command(command, text, user=user)
        await slack.wait_for("response_url", count=n + 1)
        said = slack.called("response_url")[n]
        assert said["response_type"] == "ephemeral"
        if user == "U1":
            assert said["text"] == f"Sorry, {command} is for the bot's admins only."
        elif command == "/models":
            assert "Text2Image: ready on cpu" in said["text"]
        else:
            assert "Image2Canny" in said["text"]
    assert {c["user"] for c in slack.called("users.info")} >= {"UOWNER", "U1"}


# --- connecting ---------------------------------------------------------------------------


@pytest.mark.parametrize("variable, what", [("SLACK_APP_TOKEN", "app token"), ("SLACK_BOT_TOKEN", "bot token")])
async def test_a_wrong_token_ends_with_a_clear_error(core, slack, errors, monkeypatch, variable, what):
    monkeypatch.setenv("SLACK_BOT_TOKEN", slack.bot_token)
    monkeypatch.setenv("SLACK_APP_TOKEN", slack.app_token)
    monkeypatch.setenv(variable, "xoxb-revoked" if "BOT" in variable else "xapp-revoked")
    started = time.monotonic()
    await asyncio.wait_for(slack_bot.run(core, core.config, base_url=slack.base_url), 10)
    assert time.monotonic() - started < 10
    assert errors.take(f"Slack rejected the {what} in ${variable} (invalid_auth)")
    assert len(slack.called("auth.test")) == 1 and len(slack.called("apps.connections.open")) <= 1  # no retry loop


async def test_http_mode_accepts_signed_events_and_refuses_bad_signatures(make_bot, slack, core):
    port = free_port()
    bot = await make_bot(mode="http", http_port=port)
    url = f"http://127.0.0.1:{port}/slack/events"
    event = dm("D4", "U4", "", files=[slack.add_file("d.jpg", jpeg(), "image/jpeg")])
    body = json.dumps(event_callback(event, "EvHTTP1")).encode()
    async with aiohttp.ClientSession() as http:
        bad = {**signed_headers(SECRET, body), "X-Slack-Signature": "v0=" + "0" * 64}
        async with http.post(url, data=body, headers=bad) as resp:
            assert resp.status == 401
        old = signed_headers(SECRET, body, timestamp=int(time.time()) - 600)
        async with http.post(url, data=body, headers=old) as resp:
            assert resp.status == 401
        started = time.monotonic()
        async with http.post(url, data=body, headers=signed_headers(SECRET, body)) as resp:
            assert resp.status == 200 and time.monotonic() - started < 3
        retry = {**signed_headers(SECRET, body), "X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
        async with http.post(url, data=body, headers=retry) as resp:
            assert resp.status == 200
    got = await slack.wait_for("chat.postMessage", answer("D4", None))
    assert got["text"].startswith("Got img1")
    await bot.idle()
    assert len(slack.downloads) == 1 and [r.image_id for r in core.store.images("slack:dm:U4")] == ["img1"]
