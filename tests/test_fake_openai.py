"""The scripted OpenAI server, driven by the real ``openai.AsyncOpenAI`` client."""

from __future__ import annotations

import json
import re

import openai
import pytest

from tests.fakes.openai_server import FakeLLM, fake_llm  # noqa: F401 (fake_llm is a fixture)

EDIT_IMAGE = {
    "type": "function",
    "function": {
        "name": "edit_image",
        "description": "Edit an image following an instruction.",
        "parameters": {
            "type": "object",
            "properties": {
                "image": {"type": "string", "enum": ["img1"]},
                "instruction": {"type": "string"},
            },
            "required": ["image", "instruction"],
        },
    },
}
DRAW_IMAGE = {
    "type": "function",
    "function": {
        "name": "draw_image",
        "description": "Draw an image from a prompt.",
        "parameters": {"type": "object", "properties": {"prompt": {"type": "string"}}, "required": ["prompt"]},
    },
}
WINTER = {"image": "img1", "instruction": "make it winter"}


def user(text: str) -> list[dict]:
    return [{"role": "system", "content": "You are a helpful bot."}, {"role": "user", "content": text}]


async def complete(client: openai.AsyncOpenAI, stream: bool, **kwargs):
    """One assistant message, asked for with or without streaming (the client assembles the deltas)."""
    if not stream:
        completion = await client.chat.completions.create(model="fake-model", **kwargs)
        return completion.choices[0]
    async with client.chat.completions.stream(model="fake-model", **kwargs) as events:
        completion = await events.get_final_completion()
    return completion.choices[0]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_text_reply(stream):
    async with FakeLLM() as llm, llm.client() as client:
        llm.on(user="hello").reply("Hi there, how can I help?")
        choice = await complete(client, stream, messages=user("Hello!"))

    assert choice.message.content == "Hi there, how can I help?"
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert llm.requests[0]["messages"][1] == {"role": "user", "content": "Hello!"}
    assert llm.requests[0].get("stream", False) is stream
    llm.assert_api_key("test")


async def test_streaming_chunks_arrive_in_openai_order():
    async with FakeLLM() as llm, llm.client() as client:
        llm.on().reply("Here it is: img2")
        chunks = [
            c
            async for c in await client.chat.completions.create(
                model="fake-model", messages=user("hi"), stream=True, stream_options={"include_usage": True}
            )
        ]

    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Here it is: img2"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # in pieces
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_tool_call_round_trip(stream):
    async with FakeLLM() as llm, llm.client() as client:
        llm.on(user="make it winter", tools_include="edit_image").call("edit_image", WINTER)
        llm.on(after_tool="edit_image").reply("Here it is: img2")

        messages = user("please make it winter")
        first = await complete(client, stream, messages=messages, tools=[EDIT_IMAGE], tool_choice="auto")
        [call] = first.message.tool_calls
        messages += [first.message.model_dump(exclude_none=True)]
        messages += [{"role": "tool", "tool_call_id": call.id, "content": "Edited: img2"}]
        second = await complete(client, stream, messages=messages, tools=[EDIT_IMAGE])

    assert first.finish_reason == "tool_calls"
    assert call.id == "call_1" and call.function.name == "edit_image"
    assert json.loads(call.function.arguments) == WINTER
    assert second.message.content == "Here it is: img2"
    sent_tool = llm.requests[0]["tools"][0]["function"]
    assert sent_tool["parameters"]["properties"]["image"]["enum"] == ["img1"]
    assert llm.requests[0]["tool_choice"] == "auto"
    llm.assert_all_used()


async def test_tool_call_arguments_stream_in_pieces():
    async with FakeLLM() as llm, llm.client() as client:
        llm.on().call("edit_image", WINTER)
        stream = await client.chat.completions.create(
            model="fake-model", messages=user("winter"), tools=[EDIT_IMAGE], stream=True
        )
        deltas = [c.choices[0].delta.tool_calls[0] async for c in stream if c.choices[0].delta.tool_calls]

    assert deltas[0].id == "call_1" and deltas[0].function.name == "edit_image"
    assert len(deltas) > 2 and all(d.index == 0 and d.id is None for d in deltas[1:])
    assert json.loads("".join(d.function.arguments for d in deltas)) == WINTER


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_parallel_tool_calls(stream):
    async with FakeLLM() as llm, llm.client() as client:
        llm.on(tools_include=["edit_image", "draw_image"]).reply("Doing both.").call("edit_image", WINTER).call(
            "draw_image", {"prompt": "a snowman"}
        )
        choice = await complete(client, stream, messages=user("both"), tools=[EDIT_IMAGE, DRAW_IMAGE])

    calls = choice.message.tool_calls
    assert [(c.id, c.function.name) for c in calls] == [("call_1", "edit_image"), ("call_2", "draw_image")]
    assert json.loads(calls[1].function.arguments) == {"prompt": "a snowman"}
    assert choice.message.content == "Doing both."
    assert choice.finish_reason == "tool_calls"


async def test_rule_matches_on_tool_result_content():
    async with FakeLLM() as llm, llm.client() as client:
        llm.on(after_tool="edit_image", result_contains=re.compile(r"Error: .*img9")).reply("img9 does not exist.")
        llm.on(after_tool="edit_image").reply("Done.")
        llm.on(after_tool=False).reply("No tool result here.")

        def after(result: str) -> list[dict]:
            call = {"id": "call_7", "type": "function", "function": {"name": "edit_image", "arguments": "{}"}}
            return user("edit img9") + [
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_7", "content": result},
            ]

        failed = await client.chat.completions.create(model="m", messages=after("Error: no image img9"))
        worked = await client.chat.completions.create(model="m", messages=after("Edited: img2"))
        plain = await client.chat.completions.create(model="m", messages=user("hi"))

    assert failed.choices[0].message.content == "img9 does not exist."
    assert worked.choices[0].message.content == "Done."
    assert plain.choices[0].message.content == "No tool result here."


async def test_rules_are_one_shot_unless_times_none():
    async with FakeLLM() as llm, llm.client() as client:
        llm.on(user="draw").reply("first")
        llm.on(user="draw", times=None).reply("again")
        llm.on(when=lambda req: "tools" not in req).reply("shadowed")  # the rule above answers first
        answers = [
            (await client.chat.completions.create(model="m", messages=user("draw a cat"))).choices[0].message.content
            for _ in range(3)
        ]
        models = await client.models.list()

    assert answers == ["first", "again", "again"]
    assert [r.times for r in llm.pending] == [1]  # the unreachable one
    assert [m.id for m in models.data] == ["fake-model"]


@pytest.mark.parametrize(
    "status, message, error",
    [
        (401, "Incorrect API key provided.", openai.AuthenticationError),
        (500, "The server had an error.", openai.InternalServerError),
        (400, "tools not supported by this model", openai.BadRequestError),
    ],
)
async def test_http_errors_raise_openai_exceptions(status, message, error):
    async with FakeLLM() as llm, llm.client() as client:
        llm.on().error(status, message)
        with pytest.raises(error) as raised:
            await client.chat.completions.create(model="m", messages=user("hi"), tools=[DRAW_IMAGE])

    assert raised.value.status_code == status
    assert raised.value.body["message"] == message
    assert raised.value.body["type"] == ("server_error" if status == 500 else "invalid_request_error")


async def test_server_with_a_key_rejects_other_keys():
    async with FakeLLM(api_key="sk-right") as llm, llm.client(api_key="sk-wrong") as client:
        with pytest.raises(openai.AuthenticationError) as raised:
            await client.chat.completions.create(model="m", messages=user("hi"))

    assert raised.value.code == "invalid_api_key"
    assert llm.authorizations == ["Bearer sk-wrong"]


@pytest.mark.parametrize("slow", ["delay", "hang"])
async def test_slow_answers_time_out(slow):
    async with FakeLLM() as llm, llm.client(timeout=0.2) as client:
        rule = llm.on()
        rule.delay(3).reply("too late") if slow == "delay" else rule.hang()
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="m", messages=user("hi"))
    # leaving the block released the waiting handler at once, not after 3 s


async def test_delay_within_timeout_still_answers(fake_llm):
    fake_llm.on().delay(0.05).reply("made it")
    async with fake_llm.client(timeout=2) as client:
        answer = await client.chat.completions.create(model="m", messages=user("hi"))
    assert answer.choices[0].message.content == "made it"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_malformed_arguments_arrive_verbatim(stream):
    raw = '{"image": "img1", "instruction": '
    async with FakeLLM() as llm, llm.client() as client:
        llm.on().call("edit_image", raw)
        choice = await complete(client, stream, messages=user("winter"), tools=[EDIT_IMAGE])

    assert choice.message.tool_calls[0].function.arguments == raw


async def test_unmatched_request_is_recorded_and_fails_the_test():
    with pytest.raises(AssertionError, match="no rule matched"):
        async with FakeLLM() as llm, llm.client() as client:
            llm.on(user="winter", tools_include="edit_image").call("edit_image", WINTER)
            with pytest.raises(openai.InternalServerError, match="no rule matched") as raised:
                await client.chat.completions.create(model="m", messages=user("make it winter"))  # no tools
            assert raised.value.code == "unmatched"
            assert llm.unmatched == llm.requests
            assert len(llm.pending) == 1
