"""Slack edges a bug could slip through: admin rights when users.info fails, and the retry dedupe after
thousands of events. Real slack-bolt / slack_sdk against the loopback Slack, the real Core and pool."""

from __future__ import annotations

import asyncio
import logging

import pytest
from slack_bolt.request.async_request import AsyncBoltRequest

from bot.adapters import slack_bot
from bot.app import build_core
from testkit.core import close_core, core_config
from tests.fakes.counting_pool import CountingPool
from tests.fakes.slack_payloads import event_callback, message_event, mention
from tests.test_slack import AT, answer, errors, make_bot, slack  # noqa: F401 (fixtures)


@pytest.fixture
async def core(pool, tmp_path, llm_server):
    """The real Core on the tiny pool, through a client that records what reaches the pool."""
    cfg = core_config(pool.config, tmp_path / "data", base_url=llm_server.base_url)
    c = build_core(cfg, pool_client=CountingPool, llm_retries=0, status_interval=0)
    yield c
    await close_core(c)


# --- admin rights when users.info fails -------------------------------------------------------


@pytest.mark.parametrize("error", ["missing_scope", "user_not_found"])
async def test_admin_commands_are_refused_when_users_info_fails(make_bot, slack, core, error, caplog):
    """Without the users:read scope, or for a user Slack does not know, nobody becomes an admin."""
    await make_bot(workspace_admins=True)
    slack.add_user("UBOSS", is_admin=True, is_owner=True)  # an admin, would users.info answer
    slack._methods["users.info"] = lambda body: {"ok": False, "error": error}
    asks = [("/models", ""), ("/unload", "Text2Image"), ("/reload", "Image2Canny")]
    for n, (command, text) in enumerate(asks):
        await slack.push_command(command, text, user="UBOSS")
        await slack.wait_for("response_url", count=n + 1)
        said = slack.called("response_url")[n]
        assert said["response_type"] == "ephemeral"
        assert said["text"] == f"Sorry, {command} is for the bot's admins only."
    assert core.pool.admin_calls == []  # the pool was never asked
    assert [c["user"] for c in slack.called("users.info")] == ["UBOSS"] * 3  # asked each time: not cached as admin
    assert any(f"users.info for UBOSS failed ({error}); treating them as a non-admin" in r.getMessage()
               for r in caplog.records)

    # the same user, once users.info answers, is an admin: the refusal above was the error's doing
    slack._methods["users.info"] = slack._users_info
    await slack.push_command("/models", "", user="UBOSS")
    await slack.wait_for("response_url", count=len(asks) + 1)
    assert "Text2Image: ready on cpu" in slack.called("response_url")[-1]["text"]
    assert core.pool.admin_calls == ["models"]


# --- the retry dedupe after thousands of events -----------------------------------------------


async def chatter(bot, n: int, start: int) -> None:
    """``n`` distinct events through bolt's own dispatch (its middleware and listeners, without the socket):
    people talking in a channel, which the bot does not answer."""
    for i in range(start, start + n):
        body = event_callback(message_event("message", "C5", "U5", f"lunch? {i}", channel_type="channel"),
                              f"EvCHAT{i:06d}")
        resp = await bot.app.async_dispatch(AsyncBoltRequest(body=body, mode="socket_mode"))
        assert resp.status == 200


async def test_a_retry_of_a_recent_event_is_dropped_after_thousands_of_others(make_bot, slack, llm_server, caplog):
    bot = await make_bot()
    llm_server.on(user="first question", times=2).reply("First answer.")
    llm_server.on(user="second question").reply("Second answer.")
    remembered = slack_bot.REMEMBERED_EVENTS

    old = mention("C1", "U1", f"{AT} first question")
    await slack.push_event(old, event_id="EvOLD")
    await slack.wait_for("chat.postMessage", answer("C1", old["ts"]))
    await chatter(bot, remembered - 1000, 0)
    recent = mention("C2", "U1", f"{AT} second question")
    await slack.push_event(recent, event_id="EvRECENT")
    await slack.wait_for("chat.postMessage", answer("C2", recent["ts"]))
    await chatter(bot, 3000, remembered)  # thousands more: EvOLD is now out of memory, EvRECENT is not

    with caplog.at_level(logging.INFO, "bot.adapters.slack_bot"):
        retry = await slack.push_event(recent, event_id="EvRECENT", retry_attempt=1)
        await slack.wait_acked(retry)
        for _ in range(100):  # the drop is logged before the ack; a handled retry would never log it
            if any("dropped retry 1 of event EvRECENT" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.05)
        await bot.idle()
    assert any("dropped retry 1 of event EvRECENT" in r.getMessage() for r in caplog.records)
    assert [c["text"] for c in slack.called("chat.postMessage", answer("C2", recent["ts"]))] == ["Second answer."]

    # an event older than the last REMEMBERED_EVENTS is forgotten: a retry of it is answered again
    # (Slack retries within minutes, so only a flood of events in between gets here)
    retry = await slack.push_event(old, event_id="EvOLD", retry_attempt=3)
    await slack.wait_acked(retry)
    await slack.wait_for("chat.postMessage", answer("C1", old["ts"]), count=2)
    await bot.idle()
    assert [c["text"] for c in slack.called("chat.postMessage", answer("C1", old["ts"]))] == ["First answer."] * 2
    assert len(llm_server.requests) == 3
