"""Issue 26: a turn ends in bounded time, whatever a weak or slow model does.

A weak model called make_sketch on each new result (img2, then img3, then img4 ...) until the round cap;
one such turn took 200 s. A chain of one tool on its own output now ends after ``MAX_CHAIN`` calls with
the last result, and the LLM's waits count against ``turn_timeout_s`` as README and config.toml say.
"""

from __future__ import annotations

import time

from core.agent import MAX_CHAIN
from core.store import NOTE
from testkit.core import close_core, make_core
from tests.fakes.openai_server import FakeLLM
from tests.test_agent import RecordingReply, photo, turn


async def test_a_tool_chained_on_its_own_output_ends_after_two_calls(pool, tmp_path):
    async with FakeLLM() as server:
        core = make_core(pool, tmp_path, server, max_tool_rounds=8)
        await core.handle(turn("", "s", photo()), RecordingReply())
        for n in range(6, 1, -1):  # the model sketches whatever it made last, round after round
            server.on(after_tool="make_sketch", result_contains=f"img{n}").call("make_sketch", {"image": f"img{n}"})
        server.on(user="sketch").call("make_sketch", {"image": "img1"})
        reply = RecordingReply()
        await core.handle(turn("make a sketch of img1", "s"), reply)
        await close_core(core)
    assert MAX_CHAIN == 2
    assert reply.image_ids == ["img2", "img3"]  # made by the two calls, posted
    assert "img3" in reply.text and "img4" not in reply.text  # the last call's result is the answer
    assert len(server.requests) == 3  # the third call on its own output was refused and the turn ended
    assert [r.image_id for r in core.store.images("s")] == ["img1", "img2", "img3"]
    assert core.store.messages("s")[-1]["content"] == reply.text


async def test_a_different_tool_on_the_result_is_no_chain(pool, tmp_path):
    """Sketch, then draw from the sketch, then sketch that: each call a new step, all run."""
    async with FakeLLM() as server:
        core = make_core(pool, tmp_path, server, max_tool_rounds=8)
        await core.handle(turn("", "s", photo()), RecordingReply())
        server.on(after_tool="generate_from_sketch").call("make_sketch", {"image": "img3"})
        server.on(after_tool="make_sketch", result_contains="img4").reply("Done: img4")
        server.on(after_tool="make_sketch").call("generate_from_sketch", {"image": "img2", "prompt": "a house"})
        server.on(user="sketch").call("make_sketch", {"image": "img1"})
        reply = RecordingReply()
        await core.handle(turn("sketch img1, draw from it, sketch that", "s"), reply)
        await close_core(core)
    assert (reply.text, reply.image_ids) == ("Done: img4", ["img2", "img3", "img4"])


async def test_a_slow_llm_ends_the_turn_at_turn_timeout_s(pool, tmp_path):
    """The first round answers at once, the second never in time: the turn ends at its deadline, saying so."""
    async with FakeLLM() as server:
        core = make_core(pool, tmp_path, server, turn_timeout_s=2, timeout_s=60)
        await core.handle(turn("", "s", photo()), RecordingReply())
        server.on(user="show").call("show_image", {"image": "img1"})
        server.on(after_tool="show_image").delay(30).reply("too late")
        reply = RecordingReply()
        start = time.monotonic()
        await core.handle(turn("show me img1", "s"), reply)
        took = time.monotonic() - start
        await close_core(core)
    assert reply.text == "I ran out of time for this message (2 s)."
    assert len(server.requests) == 2 and 2 <= took < 3.5
    last = core.store.messages("s")[-1]
    assert (last["content"], last["kind"]) == (reply.text, NOTE)
