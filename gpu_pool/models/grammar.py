"""Constrained decoding for the built-in LLM: a grammar built from the request, applied token by token.

The grammar (llguidance's Lark dialect, with JSON schemas inlined) allows
exactly what the request offers, in the chat template's own tool-call format
(Qwen / Hermes: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``):

    tool_choice "auto"        free text (not starting with "<")  |  calls
    tool_choice "required"    calls
    a named function          calls of that function only
    tool_choice "none"        free text (no grammar at all)
    response_format           that JSON (json_schema or any object) instead of free text

A call's JSON is ``{"name": <one offered tool>, "arguments": <that tool's parameters schema>}``,
so a call can only name an offered tool, and an image argument only an id in its enum.
Unbounded strings get a length cap that leaves room in ``max_tokens`` for the rest of the call,
so even a random model finishes its calls.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import llguidance
import llguidance.hf
import torch

from .base import BadRequest

STRING_CAP = 300  # characters in a string argument with no maxLength: about CLIP's 77-token prompt limit
ARRAY_CAP = 16
MAX_PARALLEL_CALLS = 4
# Compact, fixed JSON layout (as the templates write calls with tojson), no free whitespace to wander in;
# lenient: keywords llguidance does not enforce (e.g. "format") are ignored, not refused.
_JSON_OPTIONS = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", ", "lenient": True}


@dataclass(frozen=True)
class ToolFormat:
    """How the model writes a call: Qwen's tags, as single tokens when its vocabulary has them."""

    start: str = "<tool_call>"
    end: str = "</tool_call>"
    start_id: int | None = None
    end_id: int | None = None

    @classmethod
    def of(cls, tokenizer: Any) -> ToolFormat:
        vocab = tokenizer.get_vocab()
        return cls(start_id=vocab.get(cls.start), end_id=vocab.get(cls.end))

    def lark(self, tag: str, tag_id: int | None) -> str:
        # llguidance treats added tokens as special: a tag that is one token must be named as a token
        return f"<[{tag_id}]>" if tag_id is not None else json.dumps(tag)


def grammar(tools: list[dict], tool_choice: str, tool_name: str, response_format: dict | None,
            parallel: bool, fmt: ToolFormat, max_tokens: int = 1024) -> str | None:
    """The Lark grammar for one request; None when the answer is unconstrained."""
    cap = max(8, min(STRING_CAP, max_tokens // 3))  # characters: a call with two such strings still fits
    answer = _answer_rule(response_format, cap)
    offered = [t for t in tools if not tool_name or t["function"]["name"] == tool_name]
    if tool_name and not offered:
        raise BadRequest(f"tool_choice names the function {tool_name!r}, which is not among the tools.")
    if not offered or tool_choice == "none":
        return None if answer is None else f"start: answer\nanswer: {answer}\n"
    body = {"anyOf": [_call_schema(t["function"], cap) for t in offered], "x-guidance": _JSON_OPTIONS}
    call = f'call: {fmt.lark(fmt.start, fmt.start_id)} "\\n" body "\\n" {fmt.lark(fmt.end, fmt.end_id)}\n'
    calls = f'calls: call ("\\n" call){{0,{MAX_PARALLEL_CALLS - 1}}}\n' if parallel else "calls: call\n"
    rules = call + calls + f"body: %json {json.dumps(body)}\n"
    if tool_choice == "required" or tool_name:
        return "start: calls\n" + rules
    text = f"answer: {answer}\n" if answer else 'answer: TEXT\nTEXT: /[^<](.|\\n)*/\n'
    return "start: answer | calls\n" + text + rules


def _answer_rule(response_format: dict | None, cap: int) -> str | None:
    kind = (response_format or {}).get("type", "text")
    if kind == "json_object":
        schema: dict = {"type": "object"}
    elif kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest("response_format json_schema needs json_schema.schema, a JSON schema object.")
        schema = _bounded(schema, cap)
    else:
        return None
    return "%json " + json.dumps({**schema, "x-guidance": _JSON_OPTIONS})


def _call_schema(function: dict, cap: int) -> dict:
    params = function.get("parameters") or {"type": "object", "properties": {}}
    return {"type": "object", "properties": {"name": {"const": function["name"]}, "arguments": _bounded(params, cap)},
            "required": ["name", "arguments"], "additionalProperties": False}


def _bounded(schema: Any, cap: int) -> Any:
    """The schema with a length cap on every unbounded string and array (a random model must finish)."""
    if isinstance(schema, list):
        return [_bounded(s, cap) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _bounded(v, cap) for k, v in schema.items()}
    free = not any(k in out for k in ("enum", "const", "pattern", "format"))
    if out.get("type") == "string" and free and "maxLength" not in out:
        out["maxLength"] = max(cap, out.get("minLength", 0))
    if out.get("type") == "array" and "maxItems" not in out:
        out["maxItems"] = ARRAY_CAP
    return out


class Constraint:
    """A compiled grammar for one generation; ``__call__`` is a transformers logits processor."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, lark: str):
        self.matcher = llguidance.LLMatcher(tokenizer, llguidance.LLMatcher.grammar_from_lark(lark))
        if self.matcher.is_error():
            raise BadRequest(f"The tools or response_format cannot be enforced: {self.matcher.get_error()}")
        self.bits = torch.arange(32, dtype=torch.int32)
        self.prompt_len: int | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1]
        elif not self.matcher.consume_token(int(input_ids[0, -1])):
            raise RuntimeError(f"the grammar refused a token it allowed: {self.matcher.get_error()}")
        mask = torch.frombuffer(bytearray(self.matcher.compute_bitmask()), dtype=torch.int32)
        allowed = ((mask.unsqueeze(1) >> self.bits) & 1).flatten().bool()
        vocab = scores.shape[-1]
        if allowed.numel() < vocab:
            allowed = torch.cat([allowed, allowed.new_zeros(vocab - allowed.numel())])
        return scores.masked_fill(~allowed[:vocab].to(scores.device), float("-inf"))


def tokenizer_for(hf_tokenizer: Any, n_vocab: int) -> llguidance.LLTokenizer:
    """llguidance's view of the vocabulary (about a second for a real one: build once per model)."""
    return llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=n_vocab)


def split_calls(ids: list[int], decode, fmt: ToolFormat) -> tuple[str, list[str], bool]:
    """Generated token ids -> (text before the calls, each call's JSON text, whether a call was cut off).

    Split on the tag tokens when they are single tokens (exact: a string argument may contain
    the text "</tool_call>"), else on the text.
    """
    if fmt.start_id is not None and fmt.end_id is not None:
        if fmt.start_id not in ids:
            return decode(ids), [], False
        first = ids.index(fmt.start_id)
        calls, cut, i = [], False, first
        while i < len(ids) and ids[i] == fmt.start_id:
            try:
                j = ids.index(fmt.end_id, i + 1)
            except ValueError:
                cut = True
                break
            calls.append(decode(ids[i + 1:j]).strip())
            i = j + 1
            while i < len(ids) and ids[i] != fmt.start_id:
                i += 1
        return decode(ids[:first]), calls, cut
    text = decode(ids)
    head, *rest = text.split(fmt.start)
    calls = [r.split(fmt.end)[0].strip() for r in rest if fmt.end in r]
    return head, calls, any(fmt.end not in r for r in rest)


def parse_call(text: str) -> tuple[str, str]:
    """A call's JSON -> (name, arguments as JSON text); raises ValueError when it is not a call."""
    obj = json.loads(text)
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ValueError(f"not a tool call: {text[:200]!r}")
    args = obj.get("arguments", obj.get("parameters", {}))
    return obj["name"], args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)

