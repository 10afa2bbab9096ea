"""The buttons under images on Slack, end to end: real slack-bolt / slack_sdk against the loopback Slack
(Socket Mode "interactive" envelopes: block_actions, view_submission; views.open; chat.postEphemeral),
the real Core over the tiny-model pool, and the scripted LLM. An image is posted, the bot restarts (a new
SlackBot and Core over the same data directory; the fake keeps what was posted), then people press."""

from __future__ import annotations

import io
import json
import logging

import pytest
from PIL import Image

from bot.adapters.slack_bot import SlackBot
from core.actions import STALE
from core.turn import Turn
from tests.conftest import RestartingBots
from tests.fakes.logged_errors import LoggedErrors
from tests.fakes.slack_payloads import BOT_USER, mention
from tests.fakes.slack_server import Call, FakeSlack

AT = f"<@{BOT_USER}>"


@pytest.fixture
async def slack(monkeypatch):
    async with FakeSlack() as fake:
        monkeypatch.setenv("SLACK_BOT_TOKEN", fake.bot_token)
        monkeypatch.setenv("SLACK_APP_TOKEN", fake.app_token)
        yield fake


class Bots(RestartingBots):
    """The Slack bot, restarted at will over the same data directory and the same fake Slack."""

    def __init__(self, slack: FakeSlack, pool, tmp_path, llm_server):
        super().__init__(pool, tmp_path, llm_server)
        self.slack = slack

    def make_bot(self, core) -> SlackBot:
        return SlackBot(core, core.config, base_url=self.slack.base_url, host="127.0.0.1")

    async def start(self) -> SlackBot:
        bot = await super().start()
        await self.slack.connected()
        return bot


@pytest.fixture
async def bots(slack, pool, tmp_path, llm_server):
    with LoggedErrors("slack_bolt", "slack_sdk", "bot.adapters.slack_bot") as errors:
        b = Bots(slack, pool, tmp_path, llm_server)
        try:
            yield b
            await slack.check()  # every envelope acked within 3 s
        finally:
            await b.stop()
    errors.assert_none()


def buttons_of(image_id: str):
    return lambda c: bool(c.get("blocks")) and f'"vc|{image_id}"' in json.dumps(c["blocks"])


def labels(call: Call, image_id: str) -> list[str]:
    (block,) = [b for b in call["blocks"] if b.get("block_id") == f"vc|{image_id}"]
    return [e["text"]["text"] for e in block["elements"]]


def uploaded(slack: FakeSlack, complete: Call) -> Image.Image:
    (entry,) = json.loads(complete["files"])
    return Image.open(io.BytesIO(slack.uploads[entry["id"]]))


async def answered(slack: FakeSlack, text: str) -> Call:
    return await slack.wait_for("files.completeUploadExternal", lambda c: c.get("initial_comment") == text, timeout=30)


async def test_every_button_after_a_restart(slack, bots, llm_server):
    await bots.start()
    llm_server.on(user="draw a red house").call("generate_image", {"prompt": "a red house"})
    llm_server.on(after_tool="generate_image").reply("Here it is: img1")
    asked = mention("C1", "U1", f"{AT} draw a red house")
    await slack.push_event(asked)
    first = await answered(slack, "Here it is: img1")
    posted = await slack.wait_for("chat.postMessage", buttons_of("img1"))
    assert (posted["channel"], posted["thread_ts"]) == ("C1", asked["ts"]) == (first["channel_id"], first["thread_ts"])
    assert slack.calls.index(first) < slack.calls.index(posted)  # the buttons right under the image
    assert labels(posted, "img1") == ["Reroll", "Variations", "Upscale ×2", "Edit", "Info"]
    original = bots.core.store.image("slack:C1", "img1")
    reroll = next(e for b in posted["blocks"] if b["type"] == "actions" for e in b["elements"])
    assert (reroll["action_id"], reroll["value"]) == ("vc:reroll:img1", f"slack:C1|img1|{original.tag}")

    await bots.start()  # restart
    env = await slack.press(posted, "vc:reroll:img1", user="U2")
    rerolled = await answered(slack, "Rerolled img1 for <@U2>: img2.")  # a mention: U2 is notified
    assert (rerolled["channel_id"], rerolled["thread_ts"]) == ("C1", asked["ts"])  # a new message in the thread
    assert (await slack.wait_acked(env)).ack_delay < 3
    row = bots.core.store.image("slack:C1", "img2")
    assert (row.made.action, row.made.action_of, row.made.user) == ("reroll", "img1", "U2")
    assert row.made.seed != original.made.seed
    again = await slack.wait_for("chat.postMessage", buttons_of("img2"))
    assert again["thread_ts"] == asked["ts"]
    status = slack.called("chat.postMessage", lambda c: c["text"].startswith(("Working", "Drawing")))
    assert len(status) >= 2  # progress for the press, like for the request

    await slack.press(posted, "vc:info:img1", user="U3")
    info = await slack.wait_for("chat.postEphemeral")
    assert (info["channel"], info["user"], info["thread_ts"]) == ("C1", "U3", asked["ts"])
    assert "Tool chain: generate_image (img1)" in info["text"] and f"Seed {original.made.seed} · " in info["text"]

    await slack.press(posted, "vc:variations:img1", user="U2")
    varied = await answered(slack, "A variation of img1 for <@U2>: img3.")
    assert uploaded(slack, varied).size == (64, 64)
    await slack.press(await slack.wait_for("chat.postMessage", buttons_of("img3")), "vc:upscale:img3", user="U1")
    assert uploaded(slack, await answered(slack, "img3 upscaled ×2 for <@U1>: img4.")).size == (128, 128)

    # Edit: views.open with the press's trigger_id; the bot restarts while the form is open; then submitted
    env = await slack.press(posted, "vc:edit:img1", user="U2")
    opened = await slack.wait_for("views.open")
    assert opened.response["ok"], opened.response  # within 3 s of the press: the trigger_id was still valid
    await slack.wait_acked(env)
    (form,) = slack.views
    assert form["title"]["text"] == "Edit img1" and form["callback_id"] == "vc_edit"
    await bots.start()
    env = await slack.submit(form, {"instruction": {"instruction": "make it look like winter"}}, user="U2")
    assert (await slack.wait_acked(env)).ack_payload in (None, {})  # accepted: the form closes
    edited = await answered(slack, "Edited img1 for <@U2> (make it look like winter): img5.")
    assert edited["thread_ts"] == asked["ts"]
    assert bots.core.store.image("slack:C1", "img5").parent == "img1"


async def test_absent_and_stale_buttons(slack, bots):
    await bots.start()
    admin = Turn("slack", "slack:C1", "UADMIN", "admin", "", is_admin=True)
    await bots.core.admin(admin, "unload", "Upscale")
    try:
        await slack.push_command("/imagine", "a tree", user="U1", channel="C1")
        posted = await slack.wait_for("chat.postMessage", buttons_of("img1"), timeout=30)
        assert labels(posted, "img1") == ["Reroll", "Variations", "Edit", "Info"]  # Slack has no disabled buttons
    finally:
        await bots.core.admin(admin, "load", "Upscale", "cpu")
    await slack.press(posted, "vc:edit:img1", user="U2")
    await slack.wait_for("views.open")
    (form,) = slack.views  # open while the conversation is reset

    await slack.push_command("/reset", "", user="U1", channel="C1")
    await slack.wait_for("response_url")
    await slack.press(posted, "vc:variations:img1", user="U2")
    stale = await slack.wait_for("chat.postEphemeral")
    assert (stale["user"], stale["text"]) == ("U2", STALE)
    env = await slack.submit(form, {"instruction": {"instruction": "make it winter"}}, user="U2")
    refused = await slack.wait_acked(env)
    assert refused.ack_payload == {"response_action": "errors", "errors": {"instruction": STALE}}  # in the form
    await bots.bot.idle()
    assert not bots.core.store.images("slack:C1")


def old_message(posted: Call, action_id: str, value: str) -> Call:
    """The posted message as another version of the bot would have left it: one button."""
    button = {"type": "button", "action_id": action_id, "text": {"type": "plain_text", "text": "Reroll"},
              "value": value}
    return Call(posted.method, {**posted.body, "blocks": [{"type": "actions", "block_id": "old",
                                                            "elements": [button]}]}, response=posted.response)


async def test_every_press_is_answered_to_the_presser_alone(slack, bots, caplog):
    """Presses the bot cannot run are acked within 3 s and answered only to the presser: why, and what to do."""
    await bots.start()
    await slack.push_command("/imagine", "a tree", user="U1", channel="C1")
    posted = await slack.wait_for("chat.postMessage", buttons_of("img1"), timeout=30)
    row = bots.core.store.image("slack:C1", "img1")

    async def private(message: Call, action_id: str) -> str:
        before = len(slack.called("chat.postEphemeral"))
        await slack.wait_acked(await slack.press(message, action_id, user="U2"))  # within 3 s
        await slack.wait_for("chat.postEphemeral", count=before + 1)
        said = slack.called("chat.postEphemeral")[before]
        assert (said["channel"], said["user"]) == ("C1", "U2")
        return said["text"]

    old = await private(old_message(posted, "reroll_img1", "img1"), "reroll_img1")  # an older version's button
    assert old.startswith("This button is from an older version of the bot") and "ask me" in old.lower()
    old = await private(old_message(posted, "vc:reroll:img1", "img1"), "vc:reroll:img1")  # our name, an old value
    assert old.startswith("This button is from an older version of the bot")
    said = await private(old_message(posted, "vc:reroll:img9", f"slack:C1|img9|{row.tag}"), "vc:reroll:img9")
    assert said.startswith("img9 is not an image of this conversation") and "/reset" not in said
    assert "img1" in said  # the images it has

    bots.core.images.path(row).unlink()  # the file is gone from the data directory
    caplog.clear()
    def posts() -> int:
        return len(slack.called("chat.postMessage")) + len(slack.called("files.completeUploadExternal"))

    before = posts()
    said = await private(posted, "vc:upscale:img1")
    assert said.startswith("img1 is no longer stored") and "upload it again" in said.lower()
    await bots.bot.idle()
    assert posts() == before  # nothing for the whole channel
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]  # no traceback
    (warned,) = [r for r in caplog.records if r.levelno == logging.WARNING and "img1" in r.getMessage()]
    assert "\n" not in warned.getMessage()
