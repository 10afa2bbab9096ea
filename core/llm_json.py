"""The JSON action format, for servers whose model has no tool calling.

The model answers with one JSON object, ``{"tool": name, "arguments": {...}}``
or ``{"reply": text}``. The tools are described in one line each (a fraction
of their JSON schemas' tokens), and where the server supports it the answer is
constrained by ``response_format`` to a JSON schema built from the same tools.
"""

from __future__ import annotations

import json
import re
from typing import Any

INSTRUCTIONS = """Answer with one JSON object and nothing else:
{"tool": "<name>", "arguments": {...}} to use a tool, or {"reply": "<your answer>"} to answer the user.
Tools (? = optional):"""


def signature(tool: dict[str, Any]) -> str:
    """``edit_image(image, instruction: the change, in English): Change an image ...`` from a function schema."""
    f = tool["function"]
    params = f["parameters"]
    args = []
    for key, spec in params["properties"].items():
        arg = key if key in params.get("required", ()) else f"{key}?"
        if spec.get("type") == "array":  # a list of image ids (edit_image's reference_images)
            arg += ": [image ids]"
        elif "minimum" in spec:
            arg += f" {spec['minimum']}-{spec['maximum']}"
        elif "enum" in spec and not _image_ids(spec):
            arg += " " + "|".join(spec["enum"])
        elif spec.get("description"):
            arg += f": {spec['description']}"
        args.append(arg)
    return f"- {f['name']}({', '.join(args)}): {f['description']}"


def _image_ids(spec: dict[str, Any]) -> bool:
    """An image-id parameter: the ids are in the image list, not repeated per argument."""
    return "pattern" in spec or all(re.match(r"img\d+$|\(no images", str(v)) for v in spec["enum"])


def instructions(tools: list[dict[str, Any]]) -> str:
    return "\n".join([INSTRUCTIONS, *(signature(t) for t in tools)])


def action_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """A JSON schema that only admits a call of one of ``tools`` with valid arguments, or a reply."""
    choices = [{"type": "object", "properties": {"tool": {"const": t["function"]["name"]},
                                                 "arguments": t["function"]["parameters"]},
                "required": ["tool", "arguments"], "additionalProperties": False} for t in tools]
    reply = {"type": "string", "minLength": 1}  # the tools' text arguments carry their own minLength
    choices.append({"type": "object", "properties": {"reply": reply}, "required": ["reply"],
                    "additionalProperties": False})
    return {"anyOf": choices}


def response_format(kind: str, tools: list[dict[str, Any]]) -> dict[str, Any]:
    """``response_format`` for ``kind``: "json_schema" (OpenAI's shape, read by vLLM, llama.cpp, Ollama),
    or "json_object" (plain JSON mode; llama-cpp-python also reads a ``schema`` there)."""
    schema = action_schema(tools)
    if kind == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "action", "schema": schema}}
    return {"type": "json_object", "schema": schema}


class NotAnAction(ValueError):
    """The answer is not a valid action; the message says what is wrong, for the model."""


def parse_action(raw: str, tools: set[str]) -> tuple[str, dict[str, Any]] | str:
    """A reply text, or (tool, arguments); raises NotAnAction saying what is wrong.

    ``{"name": ..., "arguments": ...}`` is read as a tool call too: models trained on
    native tool calling often write that shape."""
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", raw.strip())
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        raise NotAnAction("the answer is not one JSON object") from None
    if not isinstance(obj, dict):
        raise NotAnAction("the answer must be a JSON object")
    if set(obj) == {"reply"} and isinstance(obj["reply"], str):
        return obj["reply"]
    name = obj.get("tool", obj.get("name"))
    if set(obj) in ({"tool", "arguments"}, {"name", "arguments"}) and isinstance(obj["arguments"], dict):
        if name not in tools:
            raise NotAnAction(f"there is no tool {name!r}; the tools are {', '.join(sorted(tools))}")
        return name, obj["arguments"]
    raise NotAnAction('use exactly {"tool": ..., "arguments": {...}} or {"reply": ...}')


def find_action(text: str, tools: set[str]) -> tuple[str, dict[str, Any]] | None:
    """A tool call written as JSON inside prose (``<tool_call>{...}</tool_call>``, a code block ...):
    the mark of a server that ignored the ``tools`` it was sent."""
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", text or ""):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        name = obj.get("tool", obj.get("name"))
        args = obj.get("arguments", obj.get("parameters"))
        if name in tools and isinstance(args, dict):
            return name, args
    return None


def to_plain(messages: list[dict]) -> list[dict]:
    """Native tool-call history as plain chat, for servers without tool calling."""
    out = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            for tc in m["tool_calls"]:
                try:
                    args = json.loads(tc["function"]["arguments"] or "{}")
                except json.JSONDecodeError:
                    args = {}  # never show the model a broken example of the format
                out.append({"role": "assistant", "content": json.dumps({"tool": tc["function"]["name"],
                                                                        "arguments": args})})
        elif m["role"] == "tool":
            out.append({"role": "user", "content": f"Result: {m['content']}"})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    return out
