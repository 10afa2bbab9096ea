"""Rebuild what the LLM sees from the session store, within a token budget.

Everything sent is bounded, so no single message and no long session can push
a conversation past the model's context: the image list details only the
newest images (older ones by id), long prompts and captions are cut in it,
each earlier message is cut to ``MAX_MESSAGE_CHARS``, and the bot's own failure
notes are never sent back as if the assistant had said them. The current message
goes whole up to the budget: the core cuts a longer one to ``current_chars`` as it
stores it, and tells the user how much was read.
"""

from __future__ import annotations

from typing import Any

from core import tokens
from core.store import NOTE, ImageRow, Store

SYSTEM = """You are a helpful assistant in a team chat who sees, draws and edits images with tools.
Images have ids like img1; use only those listed below. To do what a tool does, call it, then say in one
short sentence what you did, naming the new ids (they are attached for you). Otherwise just answer."""

DETAILED = 4  # the newest images listed with what they are; older ones by id only
FIELD_CHARS = 40  # of a prompt or caption in the image list
MAX_MESSAGE_CHARS = 3000  # of one earlier message sent (a 240,000-character prompt must not sink a conversation)
# tokens of a request besides the current message: the system prompt with its image list (100-400), the tool
# schemas offered (the core tools about 500, each group the words point at a few hundred), this turn's results
CURRENT_RESERVE = 2500


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marked when cut."""
    text = " ".join(text.split()) if len(text) > limit else text
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def current_chars(history_tokens: int) -> int:
    """How many characters of the current message are sent: what ``history_tokens`` leaves beside the rest
    of the request (``CURRENT_RESERVE``), never fewer than ``MAX_MESSAGE_CHARS``."""
    return max(MAX_MESSAGE_CHARS, (history_tokens - CURRENT_RESERVE) * tokens.CHARS_PER_TOKEN)


def read_of(text: str, history_tokens: int) -> tuple[str, list[str]]:
    """The current message as it is stored and sent, and for a longer one what to tell the user (once)."""
    limit = current_chars(history_tokens)
    if len(text) <= limit:
        return text, []
    return text[:limit], [f"Your message is long: I read the first {limit:,} of its {len(text):,} characters."]


def describe_image(r: ImageRow) -> str:
    how = "uploaded" if r.operation == "upload" else f"{r.operation} of {r.parent}" if r.parent else r.operation
    text = f"{r.image_id}: {r.width}x{r.height}, {how}"
    prompt = r.params.get("prompt") or r.params.get("instruction")
    if prompt:
        text += f' ("{clip(str(prompt), FIELD_CHARS)}")'
    if r.caption:
        text += f", shows: {clip(r.caption, FIELD_CHARS)}"
    return text


def id_ranges(ids: list[str]) -> str:
    """img1, img2, img3, img5 -> "img1-img3, img5": every id, in a few tokens."""
    nums = sorted(int(i[3:]) for i in ids)
    out: list[str] = []
    start = prev = None
    for n in [*nums, None]:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            out.append(f"img{start}" if start == prev else f"img{start}-img{prev}")
        start = prev = n
    return ", ".join(out)


def system_prompt(rows: list[ImageRow]) -> str:
    if not rows:
        return f"{SYSTEM}\n\nImages in this conversation:\n- none yet"
    older, newest = rows[:-DETAILED], rows[-DETAILED:]
    lines = [f"{SYSTEM}\n\nImages in this conversation:"]
    if older:
        lines.append(f"- older: {id_ranges([r.image_id for r in older])}")
    lines += [f"- {describe_image(r)}" for r in newest]
    return "\n".join(lines)


def to_openai(row: dict[str, Any], limit: int = MAX_MESSAGE_CHARS) -> dict[str, Any]:
    content = clip(row["content"] or "", limit)
    if row["role"] == "tool":
        return {"role": "tool", "tool_call_id": row["tool_call_id"], "content": content}
    # "" and never null: llama.cpp's Python server answers HTTP 500 to a null content
    msg: dict[str, Any] = {"role": row["role"], "content": content}
    if row["tool_calls"]:
        msg["tool_calls"] = row["tool_calls"]
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
    """Drop tool calls that never got a result (a crash mid-turn): servers reject them.
    Drop the bot's own failure notes: a model fed them copies them as its answer."""
    answered = {r["tool_call_id"] for r in turn if r["role"] == "tool"}
    out = []
    for r in turn:
        if r.get("kind") == NOTE:
            continue
        if r["role"] == "assistant" and r["tool_calls"]:
            calls = [c for c in r["tool_calls"] if c["id"] in answered]
            if not calls and not r["content"]:
                continue
            r = dict(r, tool_calls=calls or None)
        out.append(r)
    return out


def build(store: Store, session: str, rows: list[ImageRow], budget: int,
          stored: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """System prompt (always, with the image list) plus the newest whole turns that fit ``budget`` tokens.

    The caller takes what else goes with the request (tool schemas, image parts) out of ``budget``;
    ``stored``: the session's messages when the caller has read them already. The newest turn's message
    is cut to the whole ``budget`` only (the core stored it cut to ``current_chars``), earlier ones to
    ``MAX_MESSAGE_CHARS``."""
    system = {"role": "system", "content": system_prompt(rows)}
    used = tokens.message(system)
    kept: list[list[dict[str, Any]]] = []
    current = max(MAX_MESSAGE_CHARS, budget * tokens.CHARS_PER_TOKEN)
    for turn in reversed(_turns(store.messages(session) if stored is None else stored)):
        msgs = [to_openai(r, current if not kept and r["role"] == "user" else MAX_MESSAGE_CHARS)
                for r in _complete(turn)]
        cost = sum(tokens.message(m) for m in msgs)
        if kept and used + cost > budget:
            break  # older turns are dropped; the image list above still names every image
        kept.append(msgs)
        used += cost
    return [system, *(m for turn in reversed(kept) for m in turn)]


def used_tools(messages: list[dict[str, Any]]) -> set[str]:
    """Names of the tools called in ``messages`` (the history the LLM is shown)."""
    return {c["function"]["name"] for m in messages for c in m.get("tool_calls") or []}
