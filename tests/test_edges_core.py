"""Core edges a bug could slip through: the order of three or more waiting messages, the per-user job cap
counted at the pool, the shutdown grace. The real Core, the scripted LLM, and (for jobs) the tiny pool."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time

import pytest

from bot.app import build_core
from core.engine import RESTARTING
from testkit.core import close_core, core_config
from testkit.pool import write_tiny_config
from tests.fakes.counting_pool import CountingPool
from tests.test_agent import RecordingReply, turn
from testkit.waiting import until


@pytest.fixture
async def chat_core(tmp_path, llm_server):
    """The real Core for chat alone: its pool is configured but not running (no model is loaded)."""
    cfg = core_config(write_tiny_config(tmp_path / "cfg"), tmp_path / "data", base_url=llm_server.base_url)
    c = build_core(cfg, llm_retries=0, status_interval=0)
    yield c
    await close_core(c)


# --- order: four messages in one conversation ---------------------------------------------------


async def test_messages_waiting_behind_a_slow_turn_are_answered_in_the_order_sent(chat_core, llm_server):
    llm_server.on(user="message 0").delay(1.0).reply("answer 0")
    for i in range(1, 4):
        llm_server.on(user=f"message {i}").reply(f"answer {i}")
    answered: list[str] = []

    class Reply(RecordingReply):
        async def send(self, text, images=()):
            answered.append(text)

    first = asyncio.create_task(chat_core.handle(turn("message 0"), Reply()))
    await until(lambda: len(llm_server.requests) == 1)  # the first turn is running (its LLM call is slow)
    waiting = []
    for i in range(1, 4):  # three wait behind it, sent one after the other
        waiting.append(asyncio.create_task(chat_core.handle(turn(f"message {i}"), Reply())))
        await asyncio.sleep(0.05)
    await asyncio.wait_for(asyncio.gather(first, *waiting), 30)  # a lost wake-up must fail, not hang
    assert answered == ["answer 0", "answer 1", "answer 2", "answer 3"]
    asked = [r["messages"][-1]["content"] for r in llm_server.requests]
    assert asked == ["message 0", "message 1", "message 2", "message 3"]
    stored = [m["content"] for m in chat_core.store.messages("discord:channel:1")]
    assert stored == ["message 0", "answer 0", "message 1", "answer 1", "message 2", "answer 2", "message 3",
                      "answer 3"]


# --- the per-user cap, counted where the jobs arrive ------------------------------------------------


@pytest.fixture
async def counted_core(pool, tmp_path, llm_server):
    """The real Core on the tiny pool with ``per_user_jobs = 2``, through a client that counts the jobs."""
    cfg = core_config(pool.config, tmp_path / "data", base_url=llm_server.base_url)
    cfg = dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, per_user_jobs=2))
    c = build_core(cfg, pool_client=CountingPool, llm_retries=0, status_interval=0)
    yield c
    await close_core(c)


async def test_at_most_per_user_jobs_of_one_user_reach_the_pool_and_others_still_run(counted_core, llm_server):
    core, pool = counted_core, counted_core.pool
    llm_server.on(user=re.compile("draw"), after_tool=False, times=None).call("generate_image", {"prompt": "a cat"})
    llm_server.on(after_tool="generate_image", times=None).reply("Here it is: img1")
    pool.hold.clear()  # every job stays in the pool until the test lets them go
    u1 = [asyncio.create_task(core.handle(turn(f"draw cat {i}", f"discord:channel:{i}", user="U1"),
                                          RecordingReply())) for i in range(5)]
    await until(lambda: len(llm_server.requests) == 5 and pool.in_pool["U1"] == 2)
    await asyncio.sleep(0.5)  # time for a third job of U1 to get through, would the cap let it
    assert pool.in_pool["U1"] == 2

    u2 = asyncio.create_task(core.handle(turn("draw a dog", "discord:channel:9", user="U2"), RecordingReply()))
    await until(lambda: pool.in_pool["U2"] == 1)  # another user's job is not held up by U1's queue
    assert pool.in_pool["U1"] == 2 and pool.submitted == ["U1", "U1", "U2"]

    pool.hold.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*u1, u2), 60)
    assert [o.text for o in outcomes] == ["Here it is: img1"] * 6
    assert pool.peak == {"U1": 2, "U2": 1}  # never more than per_user_jobs of U1's at once
    assert pool.submitted == ["U1", "U1", "U2", "U1", "U1", "U1"] and sum(pool.in_pool.values()) == 0
    assert core.jobs.running("U1") == 0


# --- the shutdown grace ----------------------------------------------------------------------------------


async def test_a_turn_that_ends_within_the_grace_gets_its_real_answer(chat_core, llm_server):
    llm_server.on(user="think a moment").delay(1.0).reply("Thought it through.")
    reply = RecordingReply()
    work = asyncio.create_task(chat_core.handle(turn("think a moment"), reply))
    await until(lambda: len(llm_server.requests) == 1)
    started = time.monotonic()
    await chat_core.stop(grace=10)
    stopped_s = time.monotonic() - started
    outcome = await work
    assert outcome.text == reply.text == "Thought it through."  # not cut at once
    assert not outcome.error
    assert stopped_s < 5  # the stop waited for the turn, not for the whole grace
    assert [m["content"] for m in chat_core.store.messages("discord:channel:1")] == ["think a moment",
                                                                                  "Thought it through."]
    late = RecordingReply()  # and a message after the stop is answered honestly at once
    assert (await chat_core.handle(turn("hello", "discord:channel:2"), late)).text == RESTARTING == late.text
