"""Servers as they really are (issue 13): the agent over the real openai client, the scripted
server with real servers' quirks switched on, and the tiny-model pool running the tools."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import time

from PIL import Image

from core.store import NOTE
from core.turn import Attachment
from core.vision import has_images
from testkit.core import close_core, make_core
from tests.fakes.openai_server import FakeLLM, offered_tools, text_of
from tests.test_agent import RecordingReply, photo, turn


def no_tools(req: dict) -> bool:
    return "tools" not in req


async def test_a_session_survives_a_server_that_500s_on_null_content(pool, tmp_path):
    async with FakeLLM(null_content_500=True) as server:
        core = make_core(pool, tmp_path, server)
        server.on(user="draw a cat").call("generate_image", {"prompt": "a cat"})
        server.on(after_tool="generate_image").reply("Here is your cat: img1")
        server.on(user="make it winter").call("edit_image", {"image": "img1", "instruction": "make it winter"})
        server.on(after_tool="edit_image").reply("Snowy now: img2")
        first, second = RecordingReply(), RecordingReply()
        await core.handle(turn("draw a cat", "n"), first)
        await core.handle(turn("make it winter", "n"), second)
        await close_core(core)
    assert (first.text, first.image_ids) == ("Here is your cat: img1", ["img1"])
    assert (second.text, second.image_ids) == ("Snowy now: img2", ["img2"])
    calls = [m for r in server.requests for m in r["messages"] if m.get("tool_calls")]
    assert calls and all(m["content"] == "" for m in calls)
    assert all(r["max_tokens"] == core.config.llm.max_tokens for r in server.requests)


async def test_one_bad_stored_message_does_not_break_the_session(pool, tmp_path, caplog):
    async with FakeLLM() as server:
        core = make_core(pool, tmp_path, server)
        core.store.add_message("p", "user", "an old message \x00 the server's template chokes on", user="u")
        core.store.add_message("p", "assistant", "ok")
        poisoned = lambda r: any("\x00" in text_of(m.get("content")) for m in r["messages"])  # noqa: E731
        server.on(when=poisoned, times=None).error(500, "template error")
        server.on(user="hello", when=lambda r: not poisoned(r), times=2).reply("Hello!")
        replies = [RecordingReply(), RecordingReply()]
        with caplog.at_level(logging.WARNING):
            for reply in replies:
                await core.handle(turn("hello", "p"), reply)
        await close_core(core)
    assert [r.text for r in replies] == ["Hello!", "Hello!"]  # every turn, not only the first after the error
    assert "retrying once with the history cut to this turn" in caplog.text


async def test_a_server_that_ignores_tools_is_detected_and_the_json_format_takes_over(pool, tmp_path, caplog):
    async with FakeLLM(ignore_tools=True) as server:
        core = make_core(pool, tmp_path, server)
        server.on(user="draw a cat", when=no_tools, times=1).reply("Sure! Here is a cat for you.")  # prose
        server.on(user="draw a cat", when=lambda r: "response_format" in r).reply(
            '{"tool": "generate_image", "arguments": {"prompt": "a cat"}}')
        server.on(user="Result: Drew img1").reply('{"reply": "Here is your cat: img1"}')
        reply = RecordingReply()
        with caplog.at_level(logging.WARNING):
            await core.handle(turn("draw a cat", "i"), reply)
        await close_core(core)
    assert (reply.text, reply.image_ids) == ("Here is your cat: img1", ["img1"])
    assert core.llm.json_mode and len(server.probes) == 1
    assert "ignores the tools it is sent" in caplog.text
    json_request = server.requests[1]
    assert [m["role"] for m in json_request["messages"]].count("system") == 1  # one system message
    schema = json_request["response_format"]["json_schema"]["schema"]
    assert {"const": "generate_image"} in [c["properties"].get("tool") for c in schema["anyOf"]]


async def test_a_tool_call_written_as_text_is_used_and_switches_to_json(pool, tmp_path):
    async with FakeLLM(ignore_tools=True) as server:
        core = make_core(pool, tmp_path, server)
        server.on(user="draw a dog").reply('<tool_call>{"name": "generate_image", "arguments": {"prompt": "a dog"}}'
                                           '</tool_call>')
        server.on(after_tool=False, user="Result: Drew img1").reply('{"reply": "A dog: img1"}')
        reply = RecordingReply()
        await core.handle(turn("draw a dog", "t"), reply)
        await close_core(core)
    assert (reply.text, reply.image_ids) == ("A dog: img1", ["img1"])
    assert core.llm.json_mode and not server.probes


async def test_json_format_drops_what_the_server_refuses(pool, tmp_path):
    async with FakeLLM(reject_response_format=True) as server:
        core = make_core(pool, tmp_path, server, tools="json")
        server.on(user="hi").reply('{"reply": "Hello!"}')
        reply = RecordingReply()
        await core.handle(turn("hi", "r"), reply)
        await close_core(core)
    assert reply.text == "Hello!"
    sent = [(r.get("response_format") or {}).get("type") for r in server.requests]
    assert sent == ["json_schema", "json_object", None]


async def test_vision_sends_thumbnails_and_turns_off_for_a_server_that_rejects_them(pool, tmp_path, caplog):
    async with FakeLLM() as seeing:
        core = make_core(pool, tmp_path, seeing)
        await core.handle(turn("", "v", photo()), RecordingReply())
        seeing.on(user="make it winter").call("edit_image", {"image": "img1", "instruction": "winter"})
        seeing.on(after_tool="edit_image").reply("Snowy: img2")
        await core.handle(turn("make it winter", "v"), RecordingReply())
        await close_core(core)
    after_tool = seeing.requests[-1]["messages"][-3]["content"]  # the user's message, with the images
    assert [p["text"] for p in after_tool if p["type"] == "text"][1:] == ["[img1]", "[img2, just made by edit_image]"]
    assert sum(p["type"] == "image_url" for p in after_tool) == 2

    async with FakeLLM(reject_images=True) as blind:
        core, replies = await _photo_then_two_questions(pool, tmp_path / "blind", blind, photo(), caplog)
    assert [r.text for r in replies] == ["A house.", "A house."] and core.llm.vision is False
    said = "rejects image input (it failed requests with images, answered without); vision is off"
    assert caplog.text.count(said) == 1
    assert len(blind.requests) == 3  # one refused with images, then two without


async def test_the_bots_own_failures_are_not_fed_back(pool, tmp_path):
    async with FakeLLM() as server:
        core = make_core(pool, tmp_path, server)
        server.on(times=2).error(500, "boom")  # the request, and its retry with the history cut
        failed = RecordingReply()
        await core.handle(turn("hello", "f"), failed)
        server.on(user="again").reply("Hi!")
        await core.handle(turn("again", "f"), RecordingReply())
        await close_core(core)
    assert failed.text.startswith("The language model server had an error (HTTP 500)")
    assert [m["kind"] for m in core.store.messages("f") if m["role"] == "assistant"] == [NOTE, None]
    again = server.requests[-1]["messages"]
    assert [text_of(m["content"]) for m in again if m["role"] == "user"] == ["hello", "again"]  # the whole history
    assert "The language model" not in json.dumps(again)


async def test_llm_timeout_bounds_the_call_with_its_retries(pool, tmp_path):
    async with FakeLLM() as server:
        core = make_core(pool, tmp_path, server, timeout_s=1.5)
        core.llm.client = core.llm.client.with_options(max_retries=3, timeout=0.6)  # each try times out
        server.on(times=None).delay(5).reply("too late")
        reply = RecordingReply()
        start = time.monotonic()
        await core.handle(turn("hello", "d"), reply)
        took = time.monotonic() - start
        await close_core(core)
    assert reply.text == "The language model did not answer in time (1.5 s). Please try again."
    assert len(server.requests) >= 2 and took < 3


async def test_image_jobs_per_turn_are_capped(pool, tmp_path):
    async with FakeLLM() as server:
        core = make_core(pool, tmp_path, server)
        core.config = dataclasses.replace(core.config, limits=dataclasses.replace(core.config.limits,
                                                                                  images_per_turn=2))
        rule = server.on(user="draw four")
        for i in range(4):
            rule.call("generate_image", {"prompt": f"cat {i}"})
        server.on(after_tool="generate_image", result_contains="2 images is the most").reply("I drew img1 and img2.")
        reply = RecordingReply()
        await core.handle(turn("draw four cats", "c"), reply)
        await close_core(core)
    assert reply.image_ids == ["img1", "img2"] and len(core.store.images("c")) == 2
    assert reply.text == "I drew img1 and img2. (I made 2 images, the most for one message; ask again for more.)"


async def test_a_tool_hidden_for_want_of_an_image_says_so(core, llm_server):
    llm_server.on(user="winter").call("edit_image", {"image": "img1", "instruction": "winter"})
    llm_server.on(after_tool="edit_image", result_contains="there is no image in this conversation yet").reply(
        "Please upload an image first.")
    reply = RecordingReply()
    await core.handle(turn("make it winter", "h"), reply)
    assert reply.text == "Please upload an image first."
    assert "edit_image" not in [t["function"]["name"] for t in llm_server.requests[0]["tools"]]


async def test_a_server_that_reads_images_as_text_overflows_once_then_gets_none(pool, tmp_path, caplog):
    """llama-cpp-python's function-calling formats put an image part's data: URL into the prompt as text:
    no error about images, only a context that overflows. Without images the same turn fits."""
    async with FakeLLM(context_tokens=1000) as server:  # the turn fits in it; with the photo's bytes it does not
        core, replies = await _photo_then_two_questions(pool, tmp_path, server, _noise(), caplog)
    assert [r.text for r in replies] == ["A house.", "A house."] and core.llm.vision is False
    assert caplog.text.count("vision is off for this model") == 1
    # refused with the image (whole history, then this turn), answered without it; the next turn sends none
    assert [has_images(r["messages"]) for r in server.requests] == [True, True, False, False]


async def test_a_server_whose_template_takes_only_text_answers_every_turn_without_images(pool, tmp_path, caplog):
    """llama-cpp-python with a GGUF's own chat template fails any message made of parts (HTTP 500, a Jinja
    TypeError, no word about images). Seen with SmolLM2: every turn after a photo failed, for good."""
    async with FakeLLM(text_only_500=True) as server:
        core = make_core(pool, tmp_path, server)
        server.on(user="what is in this picture").reply("A house.")
        server.on(user="make it look like winter").reply("Which image?")
        first, second = RecordingReply(), RecordingReply()
        with caplog.at_level(logging.WARNING):
            await core.handle(turn("what is in this picture?", "g", photo()), first)
            await core.handle(turn("make it look like winter", "g"), second)
        await close_core(core)
    assert (first.text, second.text) == ("A house.", "Which image?") and core.llm.vision is False
    assert caplog.text.count("vision is off for this model") == 1
    # the photo's turn: failed with the history, then alone, answered as text; the next turn is text from the start
    assert [has_images(r["messages"]) for r in server.requests] == [True, True, False, False]
    assert all(isinstance(m["content"], str) for r in server.requests[2:] for m in r["messages"])


async def test_a_text_only_server_that_ignores_tools_gets_no_image_again_in_the_turn(pool, tmp_path, caplog):
    """SmolLM2's GGUF in llama-cpp-python, as the bot met it: a list of parts fails (HTTP 500) and tools are
    ignored. The turn's JSON-format request, built before vision went off, goes without the images."""
    async with FakeLLM(text_only_500=True, ignore_tools=True) as server:
        core = make_core(pool, tmp_path, server)
        server.on(user="what is in this picture", when=no_tools, times=1).reply("It is a picture.")  # prose
        server.on(user="what is in this picture", when=lambda r: "response_format" in r).reply(
            '{"reply": "A house."}')
        reply = RecordingReply()
        with caplog.at_level(logging.WARNING):
            await core.handle(turn("what is in this picture?", "s", photo()), reply)
        await close_core(core)
    assert reply.text == "A house." and core.llm.json_mode and core.llm.vision is False
    assert caplog.text.count("vision is off for this model") == 1
    failed = [has_images(r["messages"]) for r in server.requests].count(True)
    assert failed == 2  # with the history, then the turn alone; never again
    assert not has_images(server.requests[-1]["messages"])


async def _photo_then_two_questions(pool, folder, server: FakeLLM, upload: Attachment, caplog):
    """A core on ``server``: ``upload`` sent alone, then "what is in this picture?" twice (answered "A house."),
    its warnings captured; the core and the two replies, once it is closed."""
    core = make_core(pool, folder, server)
    await core.handle(turn("", "v", upload), RecordingReply())
    server.on(user="what is in this picture", times=2).reply("A house.")
    replies = [RecordingReply(), RecordingReply()]
    with caplog.at_level(logging.WARNING):
        for reply in replies:
            await core.handle(turn("what is in this picture?", "v"), reply)
    await close_core(core)
    return core, replies


def _noise() -> Attachment:
    """A photo of noise: it compresses badly, as a real photo's thumbnail does at a real working size."""
    buf = io.BytesIO()
    Image.effect_noise((96, 64), 80).convert("RGB").save(buf, "PNG")
    return Attachment("noise.png", "image/png", buf.getvalue())


async def test_the_tools_offered_follow_the_users_words_not_the_upload_line(pool, tmp_path):
    """An upload's line ("[uploaded img1 ...: 64x40, shows: ...]") must not bring the extend tools
    ("1024x512") nor any other group the user did not ask for."""
    async with FakeLLM() as server:
        core = make_core(pool, tmp_path, server)
        server.on(user="what is in this picture").reply("A house.")
        server.on(user="extend it to 1024x512").reply("Which image?")
        await core.handle(turn("what is in this picture?", "w", photo()), RecordingReply())
        await core.handle(turn("extend it to 1024x512", "w"), RecordingReply())
        await close_core(core)
    first, second = (offered_tools(r) for r in server.requests)
    assert "answer_question" in first and "extend_image" not in first
    assert "extend_image" in second


async def test_a_huge_prompt_does_not_break_later_turns(pool, tmp_path):
    huge = "a castle " * 26_000  # 234,000 characters
    async with FakeLLM(context_tokens=8000) as server:
        core = make_core(pool, tmp_path, server)
        server.on(user="draw this").call("generate_image", {"prompt": huge})
        server.on(after_tool="generate_image").reply("Drawn: img1")
        server.on(user="and now").reply("Sure.")
        first, later = RecordingReply(), RecordingReply()
        await core.handle(turn("draw this: " + huge[:2000], "x"), first)
        await core.handle(turn("and now a question", "x"), later)
        await close_core(core)
    assert first.image_ids == ["img1"] and later.text == "Sure."
    assert len(server.requests) == 3  # no request was refused for its size
    assert len(json.dumps(server.requests[-1])) < 20_000


async def test_a_context_that_no_longer_fits_says_what_helps(pool, tmp_path):
    async with FakeLLM(context_tokens=50) as server:
        core = make_core(pool, tmp_path, server)
        reply = RecordingReply()
        await core.handle(turn("hello", "o"), reply)
        await close_core(core)
    assert reply.text == ("This conversation no longer fits the language model's context. Type /reset to start "
                          "afresh, or ask an admin to lower llm.history_tokens.")


async def test_an_unreachable_server_says_what_to_do_and_keeps_the_address_in_the_log(pool, tmp_path, caplog):
    class Nowhere:
        base_url = "http://127.0.0.1:9/v1"

    core = make_core(pool, tmp_path, Nowhere)
    reply = RecordingReply()
    with caplog.at_level(logging.WARNING):
        await core.handle(turn("hello", "u"), reply)
    await close_core(core)
    assert reply.text == "I cannot reach the language model server right now. Please try again later."
    assert "127.0.0.1:9" not in reply.text and "http://127.0.0.1:9/v1" in caplog.text
    note = core.admin_notes["LLM"]  # the cause and what to do, for the admins' /models
    assert "cannot reach the language model server at http://127.0.0.1:9/v1" in note and "Ollama" not in note


async def test_strict_schemas_and_routing_to_more_tools(pool, tmp_path):
    async with FakeLLM() as server:
        core = make_core(pool, tmp_path, server, constrain="strict")
        await core.handle(turn("", "s", photo()), RecordingReply())
        server.on(user="edges of img1").call("detect_edges", {"image": "img1"})
        server.on(after_tool="detect_edges").call("generate_from_edges", {"image": "img2", "prompt": "a house"})
        server.on(after_tool="generate_from_edges").call("more_tools", {"group": "depth"})
        server.on(after_tool="more_tools").call("generate_image", {"prompt": "a cat", "width": None, "height": None})
        server.on(after_tool="generate_image").reply("Done: img3 and img4")
        reply = RecordingReply()
        await core.handle(turn("find the edges of img1 and draw a house following them", "s"), reply)
        await close_core(core)
    assert reply.image_ids == ["img2", "img3", "img4"]
    offered = [[t["function"]["name"] for t in r["tools"]] for r in server.requests]
    assert {"detect_edges", "generate_from_edges", "more_tools"} <= set(offered[0])  # routed by the user's words
    assert "estimate_depth" not in offered[0] and "estimate_depth" in offered[3]  # unlocked by more_tools
    generate = next(t["function"] for t in server.requests[0]["tools"] if t["function"]["name"] == "generate_image")
    assert generate["strict"] and generate["parameters"]["required"] == ["prompt", "width", "height", "aspect_ratio"]
    assert generate["parameters"]["properties"]["width"]["type"] == ["integer", "null"]


async def test_the_built_in_model_is_reached_through_the_client_it_is_given():
    """base_url "" (the pool's model): the bot hands LLM an http client and the address to use."""
    import httpx2

    import settings
    from core.llm import LLM, LLMFailed
    from tests.conftest import ROOT

    cfg = dataclasses.replace(settings.load(ROOT / "tests" / "config.tiny.toml", env_check=False).llm, base_url="")
    async with FakeLLM() as server:
        server.on(user="hi", tools_include="generate_image").call("generate_image", {"prompt": "hi"})
        async with httpx2.AsyncClient() as http:
            llm = LLM(cfg, http_client=http, base_url=server.base_url)
            tool = {"type": "function", "function": {"name": "generate_image", "description": "Draw.",
                                                     "parameters": {"type": "object", "properties": {}}}}
            answer = await llm.ask([{"role": "user", "content": "hi"}], [tool])
            assert [c.name for c in answer.tool_calls] == ["generate_image"] and llm.builtin
    gone = LLM(cfg, base_url="http://127.0.0.1:9/v1", max_retries=0)
    try:
        await gone.ask([{"role": "user", "content": "hi"}], [])
    except LLMFailed as e:
        assert str(e) == "The built-in language model is not answering. An admin can find why in the bot's log."
    else:
        raise AssertionError("no LLMFailed")
    finally:
        await gone.close()
