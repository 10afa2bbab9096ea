"""The agent over the real openai client, a scripted loopback LLM, and the tiny-model pool."""

from __future__ import annotations

import dataclasses
import io
import logging

import pytest
from PIL import Image

from core.turn import Attachment, Turn
from testkit.core import make_core
from testkit.images import house
from tests.fakes.openai_server import FakeLLM, offered_tools


class RecordingReply:
    """What a chat user would see: status lines, and messages with their images."""

    def __init__(self):
        self.statuses: list[str | None] = []
        self.sent: list[tuple[str, list]] = []
        self.typing_count = 0

    async def typing(self):
        self.typing_count += 1

    async def status(self, text):
        self.statuses.append(text)

    async def send(self, text, images=()):
        self.sent.append((text, list(images)))

    @property
    def text(self) -> str:
        return self.sent[-1][0]

    @property
    def image_ids(self) -> list[str]:
        return [im.image_id for im in self.sent[-1][1]]


def photo(sky=(120, 160, 200)) -> Attachment:
    buf = io.BytesIO()
    house(sky).save(buf, "JPEG")
    return Attachment("house.jpg", "image/jpeg", buf.getvalue())


def turn(text: str, session: str = "discord:channel:1", *files: Attachment, user: str = "u1") -> Turn:
    return Turn("discord", session, user, f"name-{user}", text, tuple(files))


def image_enum(request: dict, tool: str) -> list[str]:
    for t in request["tools"]:
        if t["function"]["name"] == tool:
            return t["function"]["parameters"]["properties"]["image"]["enum"]
    raise AssertionError(f"{tool} not offered")


@pytest.mark.parametrize("stream", [False, True])
async def test_the_seed_classic_chain(pool, tmp_path, llm_server, stream):
    """upload -> caption -> 'make it winter' (pix2pix) -> 'what's on the roof now?' (VQA on the new image)"""
    core = make_core(pool, tmp_path, llm_server, stream=stream)
    reply = RecordingReply()
    out = await core.handle(turn("", "discord:channel:1", photo()), reply)
    assert reply.text.startswith("Got img1") and reply.text.endswith("What should I do with it?")
    assert reply.typing_count == 1
    caption = core.store.image("discord:channel:1", "img1").caption
    assert caption is not None  # captioned on upload (the tiny model's words are gibberish)

    llm_server.on(user="make it winter", after_tool=False).call(
        "edit_image", {"image": "img1", "instruction": "make it look like winter"})
    llm_server.on(after_tool="edit_image").reply("Here it is, snowy: img2")
    reply = RecordingReply()
    out = await core.handle(turn("make it winter"), reply)
    assert out.images == ["img2"] and reply.image_ids == ["img2"]
    assert reply.text == "Here it is, snowy: img2"
    posted = reply.sent[-1][1][0]
    assert Image.open(posted.path).size == (64, 40) and posted.filename == "img2.png"
    row = core.store.image("discord:channel:1", "img2")
    assert (row.parent, row.operation) == ("img1", "edit_image")
    first = llm_server.requests[0]
    assert image_enum(first, "edit_image") == ["img1"]
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant", "user"]
    assert first["messages"][1]["content"].startswith('[uploaded img1 "house.jpg": 64x40, shows: ')
    assert "- img1: 64x40, uploaded, shows: " in first["messages"][0]["content"]  # the image list
    assert any(s and "step" in s for s in reply.statuses) and reply.statuses[-1] is None

    llm_server.on(user="on the roof", after_tool=False).call(
        "answer_question", {"image": "img2", "question": "what is on the roof?"})
    llm_server.on(after_tool="answer_question", result_contains="Answer about img2").reply("There is snow on it.")
    reply = RecordingReply()
    await core.handle(turn("what's on the roof now?"), reply)
    assert reply.text == "There is snow on it." and reply.image_ids == []
    assert image_enum(llm_server.requests[-2], "answer_question") == ["img1", "img2"]
    roles = [m["role"] for m in core.store.messages("discord:channel:1")]
    assert roles == ["user", "assistant", "user", "assistant", "tool", "assistant",
                     "user", "assistant", "tool", "assistant"]
    await core.pool.close()
    await core.llm.close()


async def test_two_sessions_do_not_leak(core, llm_server):
    await core.handle(turn("", "slack:C1", photo()), RecordingReply())
    await core.handle(turn("", "slack:C2", photo(sky=(10, 20, 30))), RecordingReply())
    llm_server.on(user="draw a dog").call("generate_image", {"prompt": "a dog"})
    llm_server.on(after_tool="generate_image").reply("Done: img2")
    llm_server.on(user="show me what we have").call("show_image", {"image": "img1"})
    llm_server.on(after_tool="show_image").reply("Only img1.")
    a, b = RecordingReply(), RecordingReply()
    await core.handle(turn("draw a dog", "slack:C1"), a)
    await core.handle(turn("show me what we have", "slack:C2"), b)
    assert a.image_ids == ["img2"]
    assert b.image_ids == ["img1"]  # asked to see it: C2's own img1, not C1's
    c2_img1 = core.store.image("slack:C2", "img1")
    assert b.sent[-1][1][0].path == core.images.path(c2_img1) != core.images.path(core.store.image("slack:C1", "img1"))
    c2_request = llm_server.requests[-2]
    assert "draw a dog" not in str(c2_request["messages"])
    assert image_enum(c2_request, "edit_image") == ["img1"]
    assert [r.image_id for r in core.store.images("slack:C2")] == ["img1"]


async def test_restart_in_the_middle_and_continue(pool, tmp_path, llm_server):
    first = make_core(pool, tmp_path, llm_server)
    await first.handle(turn("", "discord:dm:7", photo()), RecordingReply())
    llm_server.on(user="make it winter").call("edit_image", {"image": "img1", "instruction": "winter"})
    llm_server.on(after_tool="edit_image").reply("img2 is wintry.")
    await first.handle(turn("make it winter", "discord:dm:7"), RecordingReply())
    await first.pool.close()
    await first.llm.close()

    again = make_core(pool, tmp_path, llm_server)  # same data directory: a restarted bot
    llm_server.on(user="make it a painting").call("edit_image", {"image": "img2", "instruction": "a painting"})
    llm_server.on(after_tool="edit_image").reply("Here is the painting: img3.")
    reply = RecordingReply()
    await again.handle(turn("now make it a painting", "discord:dm:7"), reply)
    assert reply.image_ids == ["img3"]
    sent = llm_server.requests[-2]["messages"]
    assert any("make it winter" in (m.get("content") or "") for m in sent)  # history came back from disk
    assert image_enum(llm_server.requests[-2], "edit_image") == ["img1", "img2"]
    assert again.store.image("discord:dm:7", "img3").parent == "img2"
    await again.pool.close()
    await again.llm.close()


async def test_invented_image_id_and_malformed_arguments(core, llm_server):
    await core.handle(turn("", "s", photo()), RecordingReply())
    llm_server.on(user="edit it").call("edit_image", {"image": "img9", "instruction": "x"})
    llm_server.on(after_tool="edit_image", result_contains="'img9' does not exist").call("edit_image", '{"image": ')
    llm_server.on(after_tool="edit_image", result_contains="not valid JSON").reply("Sorry, I could not edit it.")
    reply = RecordingReply()
    await core.handle(turn("edit it", "s"), reply)
    assert reply.text == "Sorry, I could not edit it."
    tools = [m["content"] for m in core.store.messages("s") if m["role"] == "tool"]
    assert tools[0] == "Error: 'img9' does not exist in this conversation; images: img1."
    assert tools[1].startswith("Error: the arguments for edit_image were not valid JSON")


async def test_a_model_that_repeats_a_call_that_worked_gets_its_result_as_the_answer(core, llm_server):
    """A small model loops on the call it already made instead of answering (SmolLM2 did, six times a turn):
    the second time, the first call's result is the answer, and the image is posted."""
    llm_server.on(times=None, tools_include="generate_image").call("generate_image", {"prompt": "a cat"})
    reply = RecordingReply()
    await core.handle(turn("draw a cat forever", "loop"), reply)
    assert reply.text == 'Drew img1 (64x64) from "a cat".' and reply.image_ids == ["img1"]
    assert len(llm_server.requests) == 2
    tools = [m["content"] for m in core.store.messages("loop") if m["role"] == "tool"]
    assert tools[1].startswith("Error: generate_image was already called with these arguments")
    last = core.store.messages("loop")[-1]
    assert (last["role"], last["content"]) == ("assistant", reply.text)


async def test_endless_loop_is_cut(core, llm_server):
    await core.handle(turn("", "loop", photo()), RecordingReply())
    for i in range(6):  # a new question each round: no repeat, the round cap ends it
        llm_server.on(user="tell me all about it").call("answer_question", {"image": "img1", "question": f"q{i}?"})
    reply = RecordingReply()
    await core.handle(turn("tell me all about it", "loop"), reply)
    assert reply.text == "I stopped after 6 steps without finishing." and reply.image_ids == []
    assert core.store.messages("loop")[-1]["content"] == reply.text


async def test_after_two_unlocks_the_model_must_choose_a_tool(core, llm_server):
    """SmolLM2 called more_tools with a new group every round and never a tool: after two, it is not offered."""
    await core.handle(turn("", "browse", photo()), RecordingReply())
    for group in ("depth", "pose"):
        llm_server.on(user="what is in this picture").call("more_tools", {"group": group})
    llm_server.on(user="what is in this picture").reply("A house.")
    reply = RecordingReply()
    await core.handle(turn("what is in this picture?", "browse"), reply)
    assert reply.text == "A house."
    offered = [offered_tools(r) for r in llm_server.requests]
    assert ["more_tools" in o for o in offered] == [True, True, False]
    assert {"estimate_depth", "detect_pose"} <= set(offered[2])  # what it unlocked stays offered


async def test_a_failed_call_repeated_is_not_taken_as_the_answer(core, llm_server):
    await core.handle(turn("", "again", photo()), RecordingReply())
    llm_server.on(user="edit it", times=2).call("edit_image", {"image": "img7", "instruction": "x"})
    llm_server.on(after_tool="edit_image").reply("Which image? I only have img1.")
    reply = RecordingReply()
    await core.handle(turn("edit it", "again"), reply)
    assert reply.text == "Which image? I only have img1." and reply.image_ids == []
    tools = [m["content"] for m in core.store.messages("again") if m["role"] == "tool"]
    assert tools[0].startswith("Error: 'img7' does not exist") and tools[1].startswith("Error: edit_image was already")


@pytest.mark.parametrize("script, message", [
    (lambda s: s.on(times=None).error(500, "boom"),  # every retry fails too (without images, a cut history)
     "The language model server had an error (HTTP 500). Please try again in a moment."),
    (lambda s: s.on().error(401, "bad key"),
     "The language model server refused the bot's API key. An admin needs to check $OPENAI_API_KEY."),
    (lambda s: s.on().delay(3).reply("too late"),
     "The language model did not answer in time (0.5 s). Please try again."),
])
async def test_llm_failures_are_short_honest_messages(pool, tmp_path, script, message, caplog):
    async with FakeLLM() as server:
        core = make_core(pool, tmp_path, server, timeout_s=0.5)
        await core.handle(turn("", "s", photo()), RecordingReply())
        script(server)
        reply = RecordingReply()
        with caplog.at_level(logging.WARNING):
            await core.handle(turn("hello there", "s"), reply)
        await core.pool.close()
        await core.llm.close()
    assert reply.text == message
    assert "Traceback" not in reply.text
    assert any("LLM request to" in r.message for r in caplog.records)  # a log line for the admin
    kept = [m["content"] for m in core.store.messages("s")]
    assert kept[-2] == "hello there" and kept[-1] == message  # nothing lost, the failure recorded


async def test_server_without_tool_calling_falls_back_to_json_actions(core, llm_server):
    llm_server.on(when=lambda r: "tools" in r).error(400, "tools are not supported by this model")
    llm_server.on(user="a cat").reply("Sure! I will draw a cat for you.")  # not JSON: corrected
    llm_server.on(user="not valid").reply('{"tool": "generate_image", "arguments": {"prompt": "a cat"}}')
    llm_server.on(user="Result: Drew img1").reply('{"reply": "Here is your cat: img1"}')
    reply = RecordingReply()
    await core.handle(turn("draw a cat", "json"), reply)
    assert reply.text == "Here is your cat: img1" and reply.image_ids == ["img1"]
    assert core.llm.json_mode
    assert "tools" not in llm_server.requests[1]


async def test_bad_upload_is_reported_and_nothing_is_lost(core, llm_server):
    await core.handle(turn("", "s", photo()), RecordingReply())
    reply = RecordingReply()
    await core.handle(turn("", "s", Attachment("cat.png", "image/png", b"meow, not a picture")), reply)
    assert reply.text == "cat.png is not an image: it looks like a text file."
    assert [r.image_id for r in core.store.images("s")] == ["img1"]


async def test_words_with_an_unusable_upload_are_not_acted_on(core, llm_server):
    """"make it winter" + a text file: the LLM would edit an older image or guess; the user is told instead."""
    await core.handle(turn("", "u", photo()), RecordingReply())
    reply = RecordingReply()
    await core.handle(turn("make it winter", "u", Attachment("notes.png", "image/png", b"eggs, milk")), reply)
    assert reply.text == ("notes.png is not an image: it looks like a text file. "
                          "I did not act on your message: attach an image and send it again.")
    assert reply.image_ids == [] and not llm_server.requests
    assert [r.image_id for r in core.store.images("u")] == ["img1"]
    assert not any("make it winter" in (m["content"] or "") for m in core.store.messages("u"))


async def test_direct_command_without_llm(core):
    reply = RecordingReply()
    out = await core.direct(turn("/imagine", "cmd"), reply, "generate_image", {"prompt": "a red house"})
    assert out.images == ["img1"] and reply.image_ids == ["img1"]
    assert reply.text.startswith('Drew img1 (64x64) from "a red house"')


async def test_admin_commands_need_an_admin(core):
    """A refusal is an answer, like any other: nothing is raised to the adapter."""
    assert await core.command(turn("/models"), "models") == "Sorry, /models is for the bot's admins only."
    refused = await core.command(turn("/load"), "load", {"model": "Upscale"})
    assert refused == "Sorry, /load is for the bot's admins only."
    admin = dataclasses.replace(turn("/models"), is_admin=True)
    listing = await core.command(admin, "models")
    assert "Text2Image: ready on cpu (float32)" in listing


async def test_turn_deadline(pool, tmp_path):
    async with FakeLLM() as server:
        core = make_core(pool, tmp_path, server, turn_timeout_s=0.5)
        server.on().delay(2).reply("too late")
        reply = RecordingReply()
        await core.handle(turn("hello", "s"), reply)
        await core.pool.close()
        await core.llm.close()
    assert reply.text == "I ran out of time for this message (0.5 s)."
    assert core.store.messages("s")[-1]["content"] == reply.text


async def test_read_only_calls_in_one_answer_all_run_and_keep_their_order(core, llm_server):
    await core.handle(turn("", "ro", photo()), RecordingReply())
    llm_server.on(user="tell me").call("answer_question", {"image": "img1", "question": "what colour is it?"}) \
        .call("caption_image", {"image": "img1"}).call("detect_edges", {"image": "img1"})
    llm_server.on(after_tool=True).reply("Done: img2")
    reply = RecordingReply()
    await core.handle(turn("tell me about it", "ro"), reply)
    tools = [(m["name"], m["content"]) for m in core.store.messages("ro") if m["role"] == "tool"]
    assert [t[0] for t in tools] == ["answer_question", "caption_image", "detect_edges"]
    assert tools[0][1].startswith(("Answer about img1", "The question-answering model had no answer"))
    assert tools[1][1].startswith(("img1 shows: ", "The captioning model found nothing"))
    assert tools[2][1] == "Made img2, the edge map of img1."
    assert reply.image_ids == ["img2"]


async def test_an_answer_attaches_what_this_turn_made_and_what_the_user_asked_to_see(core, llm_server):
    """Not the user's own photo again, not every image a list names, not one an error message names."""
    await core.handle(turn("", "att", photo()), RecordingReply())
    llm_server.on(user="what's in this picture").call("caption_image", {"image": "img1"})
    llm_server.on(after_tool="caption_image").reply("img1 shows a house.")
    llm_server.on(user="draw a cat").call("generate_image", {"prompt": "a cat"})
    llm_server.on(after_tool="generate_image").reply("Here is img2, next to img1.")
    llm_server.on(user="edit img7").call("edit_image", {"image": "img7", "instruction": "x"})
    llm_server.on(after_tool="edit_image").reply("'img7' does not exist; images: img1, img2.")
    llm_server.on(user="list").reply("We have img1 and img2.")
    llm_server.on(user="show me the first one").call("show_image", {"image": "img1"})
    llm_server.on(after_tool="show_image").reply("Here is img1 again.")
    seen = []
    for said in ("what's in this picture?", "draw a cat", "edit img7", "list them", "show me the first one"):
        reply = RecordingReply()
        await core.handle(turn(said, "att"), reply)
        seen.append((reply.text, reply.image_ids))
    assert seen == [("img1 shows a house.", []), ("Here is img2, next to img1.", ["img2"]),
                    ("'img7' does not exist; images: img1, img2.", []), ("We have img1 and img2.", []),
                    ("Here is img1 again.", ["img1"])]
