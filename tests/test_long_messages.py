"""A long Slack message (Slack allows 40,000 characters) reaches the LLM whole up to the budget, and the
user is told how much was read when it is longer: the real slack-bolt client against the loopback
Slack, the real Core, and the scripted LLM server, whose recorded requests show what the model read."""

from __future__ import annotations

from core import history
from tests.fakes.openai_server import text_of
from tests.fakes.slack_payloads import mention
from tests.test_slack import AT, answer, bot, errors, make_bot, slack  # noqa: F401 (fixtures)


def words(n: int, tag: str) -> str:
    """``n`` characters of text that starts with ``tag`` and ends with "END"."""
    body = tag + " " + "the quick brown fox jumps over the lazy dog " * (n // 44 + 1)
    return body[: n - 4] + " END"


async def ask(slack, llm_server, text: str) -> tuple[str, str]:
    """Mention the bot with ``text``; what the LLM was sent as the user's message, and the answer shown."""
    event = mention("C1", "U1", f"{AT} {text}")
    await slack.push_event(event)
    said = await slack.wait_for("chat.postMessage", answer("C1", event["ts"]), timeout=20)
    return text_of(llm_server.requests[-1]["messages"][-1]["content"]), said["text"]


async def test_a_10000_character_message_reaches_the_llm_whole(bot, slack, core, llm_server):
    assert core.config.llm.history_tokens == 6000  # the shipped budget
    text = words(10_000, "essay")
    llm_server.on(user="essay").reply("Read it all.")
    sent, shown = await ask(slack, llm_server, text)
    assert sent == text  # not 2,999 characters: every one of the 10,000
    assert shown == "Read it all."  # and no notice: nothing was cut
    await bot.idle()


async def test_a_40000_character_message_is_cut_to_the_budget_and_the_user_is_told(bot, slack, core, llm_server):
    text = words(40_000, "novel")
    llm_server.on(user="novel").reply("A long one.")
    sent, shown = await ask(slack, llm_server, text)
    read = history.current_chars(core.config.llm.history_tokens)
    assert read > 3 * history.MAX_MESSAGE_CHARS and sent == text[:read]  # as much as the budget takes
    assert shown == f"Your message is long: I read the first {read:,} of its 40,000 characters. A long one."
    request_chars = sum(len(text_of(m["content"])) for m in llm_server.requests[-1]["messages"])
    assert request_chars // 3 < core.config.llm.history_tokens  # the request still fits the budget

    llm_server.on(user="and now").reply("Sure.")
    sent, shown = await ask(slack, llm_server, "and now?")  # told once: the next answer has no notice
    assert shown == "Sure."
    earlier = [text_of(m["content"]) for m in llm_server.requests[-1]["messages"] if m["role"] == "user"][0]
    assert len(earlier) == history.MAX_MESSAGE_CHARS  # an earlier message is cut as before
    await bot.idle()
