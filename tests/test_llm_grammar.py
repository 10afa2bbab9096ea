"""The built-in LLM's grammar and request checks, without a model: what a call may and may not say."""

from __future__ import annotations

import json
import re

import pytest
from transformers import AutoTokenizer

from core import toolset
from core.tools import TOOLS
from gpu_pool.models import grammar
from gpu_pool.models.base import BadRequest
from gpu_pool.openai_api import ApiError, job_params
from scripts.tiny_models.common import _bytes_to_unicode

IDS = ["img1", "img2"]
SCHEMAS = [t.schema(IDS) for t in TOOLS]  # what the core offers, image ids as enums


@pytest.fixture(scope="module")
def tok(tiny_dir):
    hf = AutoTokenizer.from_pretrained(tiny_dir / "llm")
    return hf, grammar.ToolFormat.of(hf), grammar.tokenizer_for(hf, len(hf))


def accepts(tok, lark: str, text: str) -> bool:
    """Whether the grammar lets the model write exactly ``text`` and stop there."""
    hf, _, lltok = tok
    c = grammar.Constraint(lltok, lark)
    ids = hf.encode(text, add_special_tokens=False)
    return c.matcher.validate_tokens(ids) == len(ids) and c.matcher.consume_tokens(ids) and c.matcher.is_accepting()


def call(name: str, **args) -> str:
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": args})}\n</tool_call>'


def test_the_tool_tags_are_single_tokens_of_the_tiny_qwen_vocabulary(tok):
    _, fmt, _ = tok
    assert fmt.start_id is not None and fmt.end_id is not None


def test_a_call_may_name_only_an_offered_tool_and_an_existing_image(tok):
    lark = grammar.grammar(SCHEMAS, "auto", "", None, True, tok[1])
    assert accepts(tok, lark, call("caption_image", image="img2"))
    assert accepts(tok, lark, call("generate_image", prompt="a cat on a sofa"))
    assert not accepts(tok, lark, call("caption_image", image="img3"))  # no such image
    assert not accepts(tok, lark, call("make_coffee", image="img1"))  # no such tool
    assert not accepts(tok, lark, call("caption_image", picture="img1"))  # no such argument
    assert not accepts(tok, lark, call("caption_image"))  # a required argument missing
    assert accepts(tok, lark, call("caption_image", image="img1") + "\n" + call("detect_edges", image="img2"))


def test_text_stays_possible_unless_a_call_is_required(tok):
    fmt = tok[1]
    assert accepts(tok, grammar.grammar(SCHEMAS, "auto", "", None, True, fmt), "Hello! Send me a picture.")
    required = grammar.grammar(SCHEMAS, "required", "", None, True, fmt)
    assert not accepts(tok, required, "Hello!")
    assert accepts(tok, required, call("caption_image", image="img1"))
    assert grammar.grammar(SCHEMAS, "none", "", None, True, fmt) is None
    assert grammar.grammar([], "auto", "", None, True, fmt) is None


def test_a_named_function_and_a_single_call(tok):
    fmt = tok[1]
    only = grammar.grammar(SCHEMAS, "required", "detect_edges", None, False, fmt)
    assert accepts(tok, only, call("detect_edges", image="img1"))
    assert not accepts(tok, only, call("caption_image", image="img1"))
    assert not accepts(tok, only, call("detect_edges", image="img1") + "\n" + call("detect_edges", image="img2"))
    with pytest.raises(BadRequest, match="not among the tools"):
        grammar.grammar(SCHEMAS, "required", "fly", None, True, fmt)


def test_response_format_json_schema_is_enforced(tok):
    schema = {"type": "object", "properties": {"reply": {"type": "string"}}, "required": ["reply"],
              "additionalProperties": False}
    lark = grammar.grammar([], "auto", "", {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
                           True, tok[1])
    assert accepts(tok, lark, '{"reply": "hi"}')
    assert not accepts(tok, lark, "hi")
    assert not accepts(tok, lark, '{"tool": "x"}')


MANY = [f"img{i}" for i in range(1, 31)]  # more than toolset.ENUM_IDS: ids go as a pattern, not an enum


def test_with_many_images_a_call_may_name_only_an_image_id(tok):
    lark = grammar.grammar([toolset.schema(t, MANY) for t in TOOLS], "auto", "", None, True, tok[1])
    assert accepts(tok, lark, call("caption_image", image="img27"))
    assert not accepts(tok, lark, call("caption_image", image="the cat"))
    assert not accepts(tok, lark, call("caption_image", image="imgX"))


def test_id_patterns_use_only_what_llama_cpp_grammars_read():
    """llama-cpp-python's JSON-schema-to-grammar converter writes ``\\d`` into a quoted literal; the server
    then fails to parse the grammar and dies (seen in bench/real_llm.py at 5 images). Literals and
    bracket classes convert correctly."""
    specs = [spec for t in TOOLS for spec in toolset.schema(t, MANY)["function"]["parameters"]["properties"].values()]
    patterns = {spec["pattern"] for spec in specs if "pattern" in spec}
    assert patterns, "with this many images the ids go as a pattern"
    for p in patterns:
        assert re.fullmatch(r"\^[A-Za-z0-9_]*(\[[^\]\\]+\][+*?]?|[A-Za-z0-9_])*\$", p), p
        assert re.fullmatch(p, "img30") and not re.fullmatch(p, "img")


def test_unbounded_strings_are_capped_to_fit_max_tokens(tok):
    lark = grammar.grammar(SCHEMAS, "required", "generate_image", None, False, tok[1], max_tokens=60)
    assert accepts(tok, lark, call("generate_image", prompt="x" * 20))
    assert not accepts(tok, lark, call("generate_image", prompt="x" * 21))


def test_calls_are_split_on_the_tag_tokens_even_when_an_argument_mentions_them(tok):
    hf, fmt, _ = tok
    to_unicode = _bytes_to_unicode()

    def plain(text: str) -> list[int]:  # byte tokens, as the grammar makes a model write text inside a string
        return hf.convert_tokens_to_ids([to_unicode[b] for b in text.encode()])

    first = json.dumps({"name": "generate_image", "arguments": {"prompt": "write </tool_call> on a sign"}})
    second = json.dumps({"name": "caption_image", "arguments": {"image": "img1"}})
    ids = [fmt.start_id, *plain(f"\n{first}\n"), fmt.end_id, *plain("\n"),
           fmt.start_id, *plain(f"\n{second}\n"), fmt.end_id]
    head, calls, cut = grammar.split_calls(ids, hf.decode, fmt)
    assert head == "" and not cut
    assert [grammar.parse_call(c) for c in calls] == [
        ("generate_image", '{"prompt": "write </tool_call> on a sign"}'), ("caption_image", '{"image": "img1"}')]
    _, calls, cut = grammar.split_calls(ids[:-3], hf.decode, fmt)
    assert len(calls) == 1 and cut  # the second call was cut off by max_tokens: dropped, and said so


# --- what an OpenAI client may send ---------------------------------------------


def test_a_standard_request_becomes_a_job():
    body = {
        "model": "anything", "temperature": 0.2, "max_tokens": 5000, "user": "u1", "logprobs": False,
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "what is "}, {"type": "text", "text": "this?"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "caption_image", "arguments": '{"image": "img1"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "a cat"},
        ],
        "tools": SCHEMAS, "tool_choice": {"type": "function", "function": {"name": "caption_image"}},
        "response_format": {"type": "json_object"}, "stop": "\n\n",
    }
    params, urls = job_params(body, max_tokens_cap=256)
    assert urls == ["data:image/png;base64,AA=="]
    system, user, assistant, tool = params["messages"]
    assert system == {"role": "system", "content": "be brief"}
    assert user["content"] == [{"type": "text", "text": "what is "}, {"type": "text", "text": "this?"},
                               {"type": "image"}]
    assert assistant["content"] == ""  # null content is what llama.cpp's server choked on
    assert assistant["tool_calls"][0]["function"] == {"name": "caption_image", "arguments": {"image": "img1"}}
    assert tool == {"role": "tool", "content": "a cat", "tool_call_id": "c1"}
    assert (params["tool_choice"], params["tool_name"]) == ("required", "caption_image")
    assert params["max_tokens"] == 256  # bounded by [limits] llm_max_tokens
    assert params["temperature"] == 0.2 and params["stop"] == ["\n\n"]


@pytest.mark.parametrize("body, says", [
    ({"messages": []}, "messages must be a non-empty list"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role must be"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}]},
     "images must be data: URLs"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "only text and image_url parts"),
    ({"messages": [{"role": "user", "content": "hi"}], "tool_choice": "sometimes"}, "tool_choice must be"),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "tools[0] must be"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens must be"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}, "temperature must be"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 3}, "Only n = 1"),
    ({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "yaml"}}, "response_format must"),
])
def test_a_wrong_request_is_refused_with_what_to_fix(body, says):
    with pytest.raises(ApiError) as e:
        job_params(body, 512)
    assert e.value.status == 400 and says in str(e.value)
