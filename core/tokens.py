"""Counting tokens without the model's tokenizer: a deliberately high estimate.

The bot talks to any server, so it cannot know the tokenizer. Three characters
a token over-counts the tokenizers measured on this bot's prompts (English text
and JSON schemas: cl100k about 3.8 characters a token; SmolLM2's 49k vocabulary
about 3.3, from 7,700 characters = ~2,300 tokens in issue 13), so a budget kept
by this count is kept by the server too.
"""

from __future__ import annotations

import json
from typing import Any

CHARS_PER_TOKEN = 3
IMAGE_TOKENS = 300  # an image part: a 512 px thumbnail costs 256-340 tokens in Qwen2-VL/LLaVA-style models
MESSAGE_OVERHEAD = 4  # role and separators of the chat template


def estimate(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + 1


def message(m: dict[str, Any]) -> int:
    """Tokens of one chat message: its text, image parts, and tool calls."""
    content = m.get("content")
    n = MESSAGE_OVERHEAD
    if isinstance(content, list):
        for part in content:
            n += IMAGE_TOKENS if part.get("type") == "image_url" else estimate(part.get("text", ""))
    elif content:
        n += estimate(content)
    if m.get("tool_calls"):
        n += estimate(json.dumps(m["tool_calls"]))
    return n


def tools(schemas: list[dict[str, Any]]) -> int:
    """Tokens of the tool schemas as a server renders them into the prompt (JSON text)."""
    return estimate(json.dumps(schemas)) if schemas else 0
