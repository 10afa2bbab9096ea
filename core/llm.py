"""The LLM client: any OpenAI-compatible chat-completions server, via the openai package.

Native tool calling by default. A server that refuses tools (HTTP 400 when
``tools`` is sent) switches this client to a strict JSON action format:
the model answers with one JSON object, ``{"tool": name, "arguments": {...}}``
or ``{"reply": text}``, and gets at most two corrective retries.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import openai

import settings
from core.errors import UserFacingError

log = logging.getLogger(__name__)


class LLMFailed(UserFacingError):
    """The LLM could not give an answer; the message says why, for the chat."""


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # raw JSON text, as the model wrote it


@dataclass
class LLMAnswer:
    text: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)


JSON_MODE_PROMPT = """You cannot call tools directly. To use a tool, answer with only one JSON object:
{"tool": "<tool name>", "arguments": {<arguments>}}
To answer the user, answer with only: {"reply": "<your answer>"}
No other text. The tools:
"""


class LLM:
    def __init__(self, cfg: settings.LLMConfig, max_retries: int = 1, *, http_client: Any = None,
                 base_url: str | None = None):
        """``base_url``/``http_client`` override the config's server (the pool's built-in LLM: core/local_llm.py)."""
        self.cfg = cfg
        self.client = openai.AsyncOpenAI(base_url=base_url or cfg.base_url, api_key=cfg.api_key or "not-set",
                                         timeout=cfg.timeout_s, max_retries=max_retries, http_client=http_client)
        self.json_mode = False  # set after a server refuses native tools

    async def close(self) -> None:
        await self.client.close()

    async def ask(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> LLMAnswer:
        """One answer: text, or tool calls. Raises LLMFailed with a chat-ready message."""
        if not self.json_mode and tools:
            try:
                return await self._native(messages, tools)
            except openai.BadRequestError as e:
                if "tool" not in str(e).lower():
                    raise LLMFailed(_describe(e, self.cfg)) from e
                log.warning("%s refused native tool calling (%s); using the JSON action format", self.cfg.model, e)
                self.json_mode = True
            except openai.OpenAIError as e:
                raise LLMFailed(_describe(e, self.cfg)) from e
        if not tools:
            return LLMAnswer(await self._text(messages))
        return await self._json_actions(messages, tools)

    async def _create(self, messages: list[dict], **kw: Any) -> Any:
        if not self.cfg.stream:
            return (await self.client.chat.completions.create(model=self.cfg.model, messages=messages, **kw)
                    ).choices[0].message
        text, calls = [], {}
        stream = await self.client.chat.completions.create(model=self.cfg.model, messages=messages, stream=True, **kw)
        async for chunk in stream:
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            if delta.content:
                text.append(delta.content)
            for tc in delta.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] = tc.id or slot["id"]
                if tc.function:
                    slot["name"] += tc.function.name or ""
                    slot["arguments"] += tc.function.arguments or ""
        return _Message("".join(text) or None, [calls[i] for i in sorted(calls)])

    async def _native(self, messages: list[dict], tools: list[dict]) -> LLMAnswer:
        msg = await self._create(messages, tools=tools, tool_choice="auto")
        if isinstance(msg, _Message):
            calls = [ToolCall(c["id"] or f"call_{i}", c["name"], c["arguments"]) for i, c in enumerate(msg.calls)]
            return LLMAnswer(msg.content, calls)
        calls = [ToolCall(tc.id, tc.function.name, tc.function.arguments or "") for tc in msg.tool_calls or []]
        return LLMAnswer(msg.content, calls)

    async def _text(self, messages: list[dict]) -> str:
        try:
            msg = await self._create(messages)
        except openai.OpenAIError as e:
            raise LLMFailed(_describe(e, self.cfg)) from e
        return (msg.content or "").strip()

    async def _json_actions(self, messages: list[dict], tools: list[dict]) -> LLMAnswer:
        described = "\n".join(f"- {t['function']['name']}: {t['function']['description']} "
                              f"arguments: {json.dumps(t['function']['parameters']['properties'])}" for t in tools)
        convo = [{"role": "system", "content": JSON_MODE_PROMPT + described}, *to_plain(messages)]
        names = {t["function"]["name"] for t in tools}
        for attempt in range(3):
            raw = await self._text(convo)
            try:
                return parse_action(raw, names, attempt)
            except ValueError as e:
                log.info("JSON action rejected (%s): %r", e, raw[:200])
                convo += [{"role": "assistant", "content": raw},
                          {"role": "user", "content": f"That was not valid: {e}. Answer with only one JSON object "
                                                      "as described."}]
        raise LLMFailed("The language model did not answer in a form I can use. An admin may need a model "
                        "that supports tool calling.")


@dataclass
class _Message:
    content: str | None
    calls: list[dict[str, str]]


def parse_action(raw: str, tools: set[str], n: int = 0) -> LLMAnswer:
    """Strictly parse a JSON action; raises ValueError saying what is wrong."""
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", raw.strip())
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError("the answer is not one JSON object") from None
    if not isinstance(obj, dict):
        raise ValueError("the answer must be a JSON object")
    if set(obj) == {"reply"} and isinstance(obj["reply"], str):
        return LLMAnswer(obj["reply"])
    if set(obj) == {"tool", "arguments"} and isinstance(obj["arguments"], dict):
        if obj["tool"] not in tools:
            raise ValueError(f"there is no tool {obj['tool']!r}; the tools are {', '.join(sorted(tools))}")
        return LLMAnswer(None, [ToolCall(f"json_{n}", obj["tool"], json.dumps(obj["arguments"]))])
    raise ValueError('use exactly {"tool": ..., "arguments": {...}} or {"reply": ...}')


def to_plain(messages: list[dict]) -> list[dict]:
    """Native tool-call history as plain chat, for servers without tool calling."""
    out = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            for tc in m["tool_calls"]:
                args = tc["function"]["arguments"]
                out.append({"role": "assistant", "content": f'{{"tool": "{tc["function"]["name"]}", '
                                                            f'"arguments": {args or "{}"}}}'})
        elif m["role"] == "tool":
            out.append({"role": "user", "content": f"Result: {m['content']}"})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    return out


def _describe(e: Exception, cfg: settings.LLMConfig) -> str:
    """A short, honest message for the chat; the details go to the log."""
    log.warning("LLM request to %s failed: %r", cfg.base_url, e)
    if isinstance(e, openai.APITimeoutError):
        return f"The language model did not answer in time ({cfg.timeout_s:g} s). Please try again."
    if isinstance(e, openai.AuthenticationError):
        return (f"The language model server refused the bot's API key. An admin needs to check "
                f"${cfg.api_key_env}.")
    if isinstance(e, openai.APIConnectionError):
        return f"I cannot reach the language model server at {cfg.base_url}. An admin needs to check it."
    if isinstance(e, openai.RateLimitError):
        return "The language model server is rate-limiting the bot. Please try again in a minute."
    if isinstance(e, openai.NotFoundError):
        return f"The language model server does not know the model {cfg.model!r}. An admin needs to check llm.model."
    if isinstance(e, openai.APIStatusError):
        return f"The language model server had an error (HTTP {e.status_code}). Please try again in a moment."
    return "The language model failed to answer. Please try again."
