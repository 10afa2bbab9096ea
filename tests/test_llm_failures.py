"""The LLM server failing, as users and admins see it: an HTTP 500 costs two requests (the history-cut
retry is the retry), and a server that is gone gets users a short sentence, admins the cause in /models.
The real openai client (with the bot's own retry setting) against the scripted server; Slack over its fake."""

from __future__ import annotations

from bot.app import build_core
from testkit.core import close_core, core_config
from tests.fakes.openai_server import FakeLLM
from tests.fakes.slack_payloads import mention
from tests.test_agent import RecordingReply, turn
from tests.test_slack import ADMIN, AT, answer, bot, errors, make_bot, slack  # noqa: F401 (fixtures)


def bots_core(pool, tmp_path, server):
    """The core as the bot builds it: the openai client's retries as shipped (build_core's default)."""
    return build_core(core_config(pool.config, tmp_path / "data", base_url=server.base_url), status_interval=0)


async def test_an_http_500_costs_two_requests_with_the_same_answer(pool, tmp_path):
    async with FakeLLM() as server:
        core = bots_core(pool, tmp_path, server)
        server.on(times=None, user="hello").error(500, "boom")
        failed = RecordingReply()
        await core.handle(turn("hello", "s"), failed)
        assert failed.text.startswith("The language model server had an error (HTTP 500)")
        assert len(server.requests) == 2  # the request and its retry with the history cut; not 4

        server.on(times=1, user="again").error(500, "a passing hiccup")
        server.on(user="again").reply("Hi!")
        passed = RecordingReply()
        await core.handle(turn("again", "s"), passed)
        await close_core(core)
    assert passed.text == "Hi!" and len(server.requests) == 4  # a passing 500 is still answered


async def test_a_server_that_is_gone_gets_users_a_short_sentence_and_admins_the_cause(bot, slack, llm_server):
    address = llm_server.base_url
    await llm_server.stop()  # the LLM server goes away
    event = mention("C1", "U1", f"{AT} hello?")
    await slack.push_event(event)
    said = (await slack.wait_for("chat.postMessage", answer("C1", event["ts"]), timeout=20))["text"]
    assert said == "I cannot reach the language model server right now. Please try again later."
    assert not any(w in said.lower() for w in ("admin", "ollama", "base_url", "127.0.0.1"))

    await slack.push_command("/models", "", user=ADMIN)
    models = (await slack.wait_for("response_url"))["text"]
    assert "LLM: " in models and f"cannot reach the language model server at {address}" in models
    assert "leave llm.base_url empty to use the built-in model" in models
    await bot.idle()
