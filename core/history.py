"""Rebuild what the LLM sees from the session store, within a token budget."""

from __future__ import annotations

import json
from typing import Any

from core.store import ImageRow, Store

SYSTEM = """You are a helpful assistant in a team chat who can see, draw and edit images with tools.
Images are named by ids like img1; use only the ids listed below, never invent one or a file path.
Call a tool when the user asks for something it does; say in one short sentence what you did, naming the
image ids you made (they are attached to your message automatically). If nothing fits, say so plainly.
When an image is uploaded, its caption is given; do not call tools just to describe it again."""


def describe_image(r: ImageRow) -> str:
    how = "uploaded" if r.operation == "upload" else f"{r.operation} of {r.parent}" if r.parent else r.operation
    text = f"{r.image_id}: {r.width}x{r.height}, {how}"
    prompt = r.params.get("prompt") or r.params.get("instruction")
    if prompt:
        text += f' ("{prompt}")'
    if r.caption:
        text += f", shows: {r.caption}"
    return text


def system_prompt(rows: list[ImageRow]) -> str:
    listing = "\n".join(f"- {describe_image(r)}" for r in rows) or "- none yet"
    return f"{SYSTEM}\n\nImages in this conversation:\n{listing}"


def _tokens(m: dict[str, Any]) -> int:
    """A rough count (4 characters a token): good enough to stay inside a budget."""
    return (len(m.get("content") or "") + len(json.dumps(m.get("tool_calls") or ""))) // 4 + 4


def to_openai(row: dict[str, Any]) -> dict[str, Any]:
    if row["role"] == "tool":
        return {"role": "tool", "tool_call_id": row["tool_call_id"], "content": row["content"] or ""}
    msg: dict[str, Any] = {"role": row["role"], "content": row["content"]}
    if row["tool_calls"]:
        msg["tool_calls"] = row["tool_calls"]
    elif msg["content"] is None:
        msg["content"] = ""
    return msg


def _turns(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split into turns, each starting at a user message, tool calls always with their results."""
    turns: list[list[dict[str, Any]]] = []
    for r in rows:
        if r["role"] == "user" or not turns:
            turns.append([])
        turns[-1].append(r)
    return turns


def _complete(turn: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop tool calls that never got a result (a crash mid-turn): servers reject them."""
    answered = {r["tool_call_id"] for r in turn if r["role"] == "tool"}
    out = []
    for r in turn:
        if r["role"] == "assistant" and r["tool_calls"]:
            calls = [c for c in r["tool_calls"] if c["id"] in answered]
            if not calls and not r["content"]:
                continue
            r = dict(r, tool_calls=calls or None)
        out.append(r)
    return out


def build(store: Store, session: str, rows: list[ImageRow], budget: int) -> list[dict[str, Any]]:
    """System prompt (always, with the image list) plus the newest whole turns that fit ``budget`` tokens."""
    system = {"role": "system", "content": system_prompt(rows)}
    used = _tokens(system)
    kept: list[list[dict[str, Any]]] = []
    for turn in reversed(_turns(store.messages(session))):
        msgs = [to_openai(r) for r in _complete(turn)]
        cost = sum(_tokens(m) for m in msgs)
        if kept and used + cost > budget:
            break  # older turns are dropped; the image list above still names every image
        kept.append(msgs)
        used += cost
    return [system, *(m for turn in reversed(kept) for m in turn)]
