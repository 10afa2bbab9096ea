"""The Slack Socket Mode connection drops, or Slack asks the bot to move (a ``disconnect`` envelope), in the
middle of a drawing: real slack-bolt / slack_sdk against the loopback fake Slack (it retries envelopes whose
ack was lost, as Slack does), the real Core and the tiny-model pool.

What a user sees: the drawing is posted once, in its thread; a message sent meanwhile is answered once; an
event whose ack was lost with the connection comes again (``retry_attempt`` 1) and is not answered twice."""

from __future__ import annotations

import time

from tests.fakes.openai_server import asked
from tests.fakes.slack_payloads import mention
from tests.fakes.slack_server import FakeSlack
from tests.test_slack import AT, answer, bot, errors, in_thread, make_bot, slack  # noqa: F401 (fixtures)
from testkit.waiting import until

DRAWN = "Here is your cat: img1"


def drawings(slack: FakeSlack, event: dict) -> list:
    return slack.called("files.completeUploadExternal", in_thread(event["channel"], event["ts"]))


def start_drawing(llm_server, seconds: float) -> None:
    """The drawing's turn: generate_image, and the LLM's answer ``seconds`` after the image is made."""
    llm_server.on(user="draw a cat").call("generate_image", {"prompt": "a cat"})
    llm_server.on(after_tool="generate_image").reply(DRAWN).delay(seconds)


async def test_a_dropped_socket_mid_drawing_loses_no_message_and_handles_none_twice(bot, slack, llm_server):
    start_drawing(llm_server, 5)
    llm_server.on(user="just before").reply("Noted.")
    llm_server.on(user="while away").reply("Still here.")
    draw = mention("C1", "U1", f"{AT} draw a cat")
    await slack.push_event(draw)
    await until(lambda: llm_server.requests)  # the turn runs: its drawing is under way

    before = mention("C2", "U2", f"{AT} just before")
    sent = await slack.push_event(before)
    await slack.drop_socket()  # at once: the bot gets the event, its ack is lost with the connection
    dropped = time.monotonic()
    away = mention("C3", "U3", f"{AT} while away")
    await slack.push_event(away)  # waits for the bot to connect again, as Slack holds it
    assert len(slack.sockets) == 2

    # the event whose ack was lost comes again on the new connection; the bot acks it and drops it
    await until(lambda: slack.retries, timeout=10)
    [retry] = slack.retries
    assert retry.payload is slack.envelopes[sent].payload and retry.retry_attempt == 1
    await slack.wait_acked(retry.envelope_id)

    done = await slack.wait_for("files.completeUploadExternal", in_thread("C1", draw["ts"]), timeout=30)
    assert done.at > dropped and done["initial_comment"] == DRAWN
    await bot.idle()
    assert len(drawings(slack, draw)) == 1
    for event, text in ((before, "Noted."), (away, "Still here.")):
        assert [c["text"] for c in slack.called("chat.postMessage", answer(event["channel"], event["ts"]))] == [text]
    assert [asked(llm_server, w) for w in ("draw a cat", "just before", "while away")] == [1, 1, 1]


async def test_a_disconnect_envelope_mid_drawing_moves_the_connection_and_loses_nothing(bot, slack, llm_server):
    start_drawing(llm_server, 4)
    llm_server.on(user="after the move").reply("Moved fine.")
    draw = mention("C1", "U1", f"{AT} draw a cat")
    await slack.push_event(draw)
    await until(lambda: llm_server.requests)

    await slack.disconnect("refresh_requested")
    moved = time.monotonic()
    await until(lambda: len(slack.sockets) == 2 and slack.sockets[0].closed, timeout=10)
    after = mention("C2", "U2", f"{AT} after the move")
    env = await slack.push_event(after)
    assert slack.envelopes[env].socket == 1  # on the new connection
    said = await slack.wait_for("chat.postMessage", answer("C2", after["ts"]), timeout=20)
    assert said["text"] == "Moved fine."

    done = await slack.wait_for("files.completeUploadExternal", in_thread("C1", draw["ts"]), timeout=30)
    assert done.at > moved and done["initial_comment"] == DRAWN
    await bot.idle()
    assert len(drawings(slack, draw)) == 1 and not slack.retries and not slack.lost_acks
    assert [asked(llm_server, w) for w in ("draw a cat", "after the move")] == [1, 1]
