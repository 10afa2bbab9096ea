"""The Discord gateway drops in the middle of a drawing: the real discord.py client, the loopback fake Discord
(its sessions, RESUME replay and invalid sessions as Discord has them), the real Core and the tiny-model pool.

What a user sees: the drawing is posted once, in reply to the asking message; a message sent while the bot was
away is answered once (a RESUME replays it); after a non-resumable close the bot IDENTIFYs anew and goes on.
Discord itself never delivers the events of a session that could not be resumed (``fake.lost``): no client can
answer those, and the bot does not pretend to."""

from __future__ import annotations

import asyncio
import time

from tests.fakes.discord_server import FakeDiscord
from tests.fakes.openai_server import asked
from tests.test_discord import ANSWER, CHANNELS, bot, fake, mention  # noqa: F401 (fixtures)
from testkit.waiting import until

DRAWN = "Here is your cat: img1"


def replies(fake: FakeDiscord, channel: str, to: dict) -> list:
    return fake.matching("POST", rf"^/channels/{channel}/messages$",
                         lambda r: str(((r.json or {}).get("message_reference") or {}).get("message_id")) == to["id"])


def drawings(fake: FakeDiscord, draw: dict) -> list:
    """The replies to ``draw`` with an image (its status line is a reply too, deleted once answered)."""
    return [r for r in replies(fake, draw["channel_id"], draw) if r.files]


def start_drawing(llm_server, seconds: float) -> None:
    """The drawing's turn: the LLM calls generate_image, and writes its answer ``seconds`` after the image is made."""
    llm_server.on(user="draw a cat").call("generate_image", {"prompt": "a cat"})
    llm_server.on(after_tool="generate_image").reply(DRAWN).delay(seconds)


async def test_a_resumable_then_a_non_resumable_close_mid_drawing(fake, bot, llm_server):
    # discord.py waits 5 s before a new IDENTIFY: the drawing's answer comes after both reconnects
    start_drawing(llm_server, 8)
    llm_server.on(user="while you were away").reply("Got it.")
    llm_server.on(user="on the new session").reply("Hello again.")
    draw = mention(fake, "draw a cat")
    await fake.push("MESSAGE_CREATE", draw)
    await until(lambda: llm_server.requests)  # the turn is running: its drawing is under way

    # 1. a resumable close: the client RESUMEs, the fake replays what it missed, once
    await fake.drop_connection(4000)
    away = mention(fake, "while you were away", channel=CHANNELS[0])
    await fake.push("MESSAGE_CREATE", away)  # sent while the bot is disconnected
    await asyncio.wait_for(fake.identified.wait(), 10)
    assert len(fake.replayed) == 1 and fake.gateway_paths == ["/gateway", "/resume"]
    said = await fake.wait_for_request("POST", rf"^/channels/{CHANNELS[0]}/messages$", timeout=20)
    assert said.content == "Got it." and str(said.json["message_reference"]["message_id"]) == away["id"]

    # 2. a non-resumable close (session timed out): the RESUME is refused, the client IDENTIFYs anew
    await fake.drop_connection(4009)
    lost = mention(fake, "lost in between", channel=CHANNELS[1])
    await fake.push("MESSAGE_CREATE", lost)  # Discord never delivers it: that session is over
    await asyncio.wait_for(fake.identified.wait(), 20)
    reconnected = time.monotonic()
    ops = [f["op"] for f in fake.gateway_received]
    assert ops.count(2) == 2 and ops.count(6) == 2  # identified twice; resumed once, refused once
    assert fake.session_id == "fake-session-2" and [f["d"]["id"] for f in fake.lost] == [lost["id"]]
    after = mention(fake, "on the new session", channel=CHANNELS[2])
    await fake.push("MESSAGE_CREATE", after)
    said = await fake.wait_for_request("POST", rf"^/channels/{CHANNELS[2]}/messages$", timeout=20)
    assert said.content == "Hello again."

    # the drawing: posted once, after both reconnects, in reply to the asking message, with its image
    drawing = await fake.wait_for_request("POST", ANSWER, where=lambda r: bool(r.files), timeout=30)
    assert drawing.at > reconnected, "the drawing was done before the connection dropped: not a mid-job test"
    await bot.idle()
    [posted] = drawings(fake, draw)
    assert posted is drawing and posted.content == DRAWN and posted.files[0].data.startswith(b"\x89PNG")
    # every event handled once: one turn each, one answer each; the lost one never reached the bot
    assert [asked(llm_server, w) for w in ("draw a cat", "while you were away", "on the new session")] == [1, 1, 1]
    assert [len(replies(fake, c, m)) for c, m in ((CHANNELS[0], away), (CHANNELS[2], after))] == [1, 1]
    assert asked(llm_server, "lost in between") == 0 and not replies(fake, CHANNELS[1], lost)


async def test_an_invalid_session_mid_drawing_means_a_new_identify_and_the_drawing_still_posted(fake, bot, llm_server):
    start_drawing(llm_server, 7)
    draw = mention(fake, "draw a cat")
    await fake.push("MESSAGE_CREATE", draw)
    await until(lambda: llm_server.requests)
    await fake.invalidate_session()  # op 9, d=false, on the open socket
    await asyncio.wait_for(fake.identified.wait(), 20)
    reconnected = time.monotonic()
    assert [f["op"] for f in fake.gateway_received].count(2) == 2 and fake.session_id == "fake-session-2"
    drawing = await fake.wait_for_request("POST", ANSWER, where=lambda r: bool(r.files), timeout=30)
    await bot.idle()
    assert drawing.at > reconnected
    assert [r.content for r in drawings(fake, draw)] == [DRAWN]
    assert asked(llm_server, "draw a cat") == 1
