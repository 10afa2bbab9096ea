"""The 👀 reaction on Slack: a sign within a second that a mention was seen (Slack shows bots no typing
indicator, and the status message comes after a second on purpose), gone once answered; best-effort.
Real slack-bolt / slack_sdk against the loopback Slack (its reactions.add/remove as strict as Slack's)."""

from __future__ import annotations

import asyncio
import logging
import re

from tests.fakes.slack_payloads import mention
from tests.test_slack import ADMIN, AT, answer, bot, errors, make_bot, slack  # noqa: F401 (fixtures)


async def test_twenty_simultaneous_mentions_see_eyes_within_a_second_gone_once_answered(bot, slack, llm_server):
    events = []
    for i in range(20):
        llm_server.on(user=re.compile(rf"\bq{i}\b")).reply(f"a{i}")
        thread = slack.human_message("C9", f"U{100 + i}", "a thread") if i % 2 else None  # odd: in threads
        events.append(mention("C9" if thread else f"C{100 + i}", f"U{100 + i}", f"{AT} q{i}", thread_ts=thread))
    envs = await asyncio.gather(*(slack.push_event(e) for e in events))

    answers = await asyncio.gather(*(slack.wait_for("chat.postMessage", answer(e["channel"], e.get("thread_ts")
                                                                                or e["ts"]), timeout=30)
                                     for e in events))
    await bot.idle()
    assert [a["text"] for a in answers] == [f"a{i}" for i in range(20)]
    within = 0
    for e, env, said in zip(events, envs, answers):
        added = slack.called("reactions.add", lambda c, e=e: (c["channel"], c["timestamp"]) == (e["channel"], e["ts"]))
        assert [(c["name"], c.response["ok"]) for c in added] == [("eyes", True)]  # on the user's own message
        within += added[0].at - slack.envelopes[env].sent_at < 1.0
        removed = slack.called("reactions.remove", lambda c, e=e: c["timestamp"] == e["ts"])
        assert [(c["name"], c.response["ok"]) for c in removed] == [("eyes", True)]
        assert removed[0].at >= said.at  # taken off once the answer is there
        assert slack.reactions.of(e["channel"], e["ts"]) == []
    assert within >= 19, f"only {within} of 20 mentions showed 👀 within a second"


async def test_without_the_reactions_scope_the_answers_still_come_and_admins_are_told(bot, slack, llm_server,
                                                                                      caplog):
    slack.reactions.missing_scope = True
    llm_server.on(user="first").reply("one")
    llm_server.on(user="second").reply("two")
    with caplog.at_level(logging.WARNING, "bot.adapters.slack_reply"):
        for word, said in [("first", "one"), ("second", "two")]:
            event = mention("C1", "U1", f"{AT} {word}")
            await slack.push_event(event)
            assert (await slack.wait_for("chat.postMessage", answer("C1", event["ts"])))["text"] == said
            await bot.idle()
    assert [c.response["error"] for c in slack.calls if c.method.startswith("reactions.")] == ["missing_scope"]
    warned = [r.getMessage() for r in caplog.records if "reactions.add" in r.getMessage()]
    assert len(warned) == 1 and "reactions:write" in warned[0]  # logged once, with what to do
    await slack.push_command("/models", "", user=ADMIN)
    models = await slack.wait_for("response_url")
    assert "Slack: " in models["text"] and "reactions:write scope" in models["text"]
