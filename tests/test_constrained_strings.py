"""Issue 26: constrained calls must not let an empty required text through.

Against SmolLM2 behind llama-cpp-python, ``find_object({"image": "img1", "object": ""})`` came back from a
grammar-constrained call: the schemas the core sends had lost ``minLength``. What the fake server receives
(native tools and the JSON format's ``response_format``) and the built-in LLM's grammar built from it are
checked here.
"""

from __future__ import annotations

import json


from core import llm_json, toolset
from core.tools import TOOLS
from gpu_pool.models import grammar
from testkit.core import close_core, make_core
from tests.fakes.openai_server import FakeLLM
from tests.test_agent import RecordingReply, photo, turn
from tests.test_llm_grammar import accepts, call, tok  # noqa: F401 (tok: the tiny tokenizer fixture)

IDS = ["img1", "img2"]
SENT = [toolset.schema(t, IDS) for t in TOOLS]  # what the core offers a server, as it sends it


def free_texts(parameters: dict) -> dict[str, dict]:
    """The required string arguments a model writes freely (not an image id from an enum or a pattern)."""
    props = parameters["properties"]
    return {k: props[k] for k in parameters.get("required", ())
            if props[k].get("type") == "string" and not {"enum", "const", "pattern"} & set(props[k])}


def test_every_required_text_argument_the_core_sends_has_a_min_length():
    texts = {f"{t['function']['name']}.{k}": spec
             for t in SENT for k, spec in free_texts(t["function"]["parameters"]).items()}
    assert "find_object.object" in texts and "replace_object.replacement" in texts
    assert {name for name, spec in texts.items() if spec.get("minLength", 0) < 1} == set()


async def test_the_schemas_a_server_receives_carry_min_length(pool, tmp_path):
    """Over the real openai client: native tools, then the JSON format's response_format."""
    async with FakeLLM(ignore_tools=True) as server:
        core = make_core(pool, tmp_path, server)
        await core.handle(turn("", "s", photo()), RecordingReply())
        server.on(user="find the dog", when=lambda r: "response_format" not in r, times=1).reply("A dog!")
        server.on(user="find the dog", when=lambda r: "response_format" in r).reply('{"reply": "No dog in img1."}')
        reply = RecordingReply()
        await core.handle(turn("find the dog in img1", "s"), reply)
        await close_core(core)
    assert reply.text == "No dog in img1."
    native = next(r for r in server.requests if r.get("tools") and "find_object" in json.dumps(r["tools"]))
    find = next(t["function"] for t in native["tools"] if t["function"]["name"] == "find_object")
    assert find["parameters"]["properties"]["object"]["minLength"] == 1
    for tool in native["tools"]:
        assert all(s.get("minLength", 0) >= 1 for s in free_texts(tool["function"]["parameters"]).values()), tool
    constrained = next(r for r in server.requests if "response_format" in r)
    choices = constrained["response_format"]["json_schema"]["schema"]["anyOf"]
    by_tool = {c["properties"]["tool"]["const"]: c["properties"]["arguments"]
               for c in choices if "tool" in c["properties"]}
    assert by_tool["find_object"]["properties"]["object"]["minLength"] == 1
    for name, parameters in by_tool.items():
        assert all(s.get("minLength", 0) >= 1 for s in free_texts(parameters).values()), name
    reply_choice = next(c for c in choices if "reply" in c["properties"])
    assert reply_choice["properties"]["reply"]["minLength"] == 1


def test_the_built_in_llms_grammar_refuses_an_empty_required_text(tok):
    lark = grammar.grammar(SENT, "auto", "", None, True, tok[1])
    assert accepts(tok, lark, call("find_object", image="img1", object="the dog"))
    assert not accepts(tok, lark, call("find_object", image="img1", object=""))
    assert not accepts(tok, lark, call("replace_object", image="img1", object="the cat", replacement=""))
    assert not accepts(tok, lark, call("generate_image", prompt=""))


def test_the_json_formats_grammar_refuses_an_empty_required_text(tok):
    lark = grammar.grammar([], "auto", "", llm_json.response_format("json_schema", SENT), True, tok[1])
    ok = {"tool": "find_object", "arguments": {"image": "img1", "object": "the dog"}}
    assert accepts(tok, lark, json.dumps(ok))
    assert not accepts(tok, lark, json.dumps({"tool": "find_object", "arguments": {"image": "img1", "object": ""}}))
    assert not accepts(tok, lark, json.dumps({"reply": ""}))
    assert accepts(tok, lark, json.dumps({"reply": "Hello!"}))
