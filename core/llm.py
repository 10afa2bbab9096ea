"""The LLM client: any OpenAI-compatible chat-completions server, via the openai package.

Servers differ; this client adapts to what one does, once, with a log line:
- Tools: native tool calling by default. A server that refuses ``tools`` (HTTP
  400), or silently ignores them (writes a tool call as JSON text, or answers
  in prose and then fails a one-time probe), switches the client to the JSON
  action format (core/llm_json.py). ``[llm] tools`` can also fix the mode.
- Constraints (``[llm] constrain``): strict function schemas on OpenAI's API;
  in the JSON format a ``response_format`` JSON schema, then plain JSON mode,
  then nothing, as the server refuses each. Answers are validated either way.
- Images (``[llm] vision = "auto"``): a server that rejects image parts, or
  fails the current turn with them and answers it without, gets none from then on.
- History: a request the server fails (HTTP 400/413/422/500) is sent once more
  with the history cut to the current turn, so one bad stored message never
  breaks a session. That is the one retry of an HTTP 500 (the openai client's
  own retries skip it: ``_Client``), so a failing server costs two requests, not four.
Every request sets ``max_tokens``; ``timeout_s`` bounds the whole call, retries
included. Messages are plain OpenAI chat-completions (tools, tool_choice,
max_tokens, response_format, image_url parts), so any server can serve them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import openai

import settings
from core import llm_json
from core.errors import UserFacingError
from core.vision import has_images, without_images

log = logging.getLogger(__name__)
BUILTIN_URL = "http://pool/v1"  # base_url "": the pool's endpoint, reached through the http_client given
PROBE = {"type": "function", "function": {
    "name": "tool_check", "description": "Confirms that tool calling works.",
    "parameters": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}}}
_HISTORY_ERRORS = (400, 413, 422, 500)


class _Client(openai.AsyncOpenAI):
    """The openai client, less its own retry of an HTTP 500: ``LLM._request`` retries that once itself, with
    the history cut (a retry of each of two tries made four requests). 502-504, 429, timeouts: as before."""

    def _should_retry(self, response) -> bool:
        return response.status_code != 500 and super()._should_retry(response)


class LLMFailed(UserFacingError):
    """The LLM could not give an answer; the message says why, for the chat."""


class LLMLoading(LLMFailed):
    """The built-in model is still downloading or loading; ``progress`` says how far (the pool's
    ModelInfo fields: phase, downloaded, download_total, eta_s). Worth waiting for."""

    def __init__(self, message: str, progress: dict[str, Any]):
        super().__init__(message)
        self.progress = progress


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # raw JSON text, as the model wrote it


@dataclass
class LLMAnswer:
    text: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass
class _Message:
    content: str | None
    calls: list[ToolCall]


class LLM:
    def __init__(self, cfg: settings.LLMConfig, max_retries: int = 1, *, http_client: Any = None,
                 base_url: str | None = None):
        """``http_client`` (an httpx2/httpx ``AsyncClient``) and ``base_url`` let the bot reach the
        pool's built-in model, e.g. over its unix socket, when ``cfg.base_url`` is empty."""
        self.cfg = cfg
        self.builtin = cfg.built_in
        self.base_url = base_url or cfg.base_url or BUILTIN_URL
        self.client = _Client(base_url=self.base_url, api_key=cfg.api_key or "not-set",
                                         timeout=cfg.timeout_s, max_retries=max_retries, http_client=http_client)
        self.json_mode = cfg.tools == "json"  # set when a server refuses or ignores native tools
        self.tools_checked = cfg.tools != "auto" or self.builtin  # a tool call seen: no probe needed
        self.vision = cfg.vision is not False and cfg.vision_images > 0
        self.response_format = None if cfg.constrain == "off" else "json_schema"  # then "json_object", None
        host = urlparse(self.base_url).hostname or ""
        self.strict = cfg.constrain == "strict" or (
            cfg.constrain == "auto" and host.endswith(("api.openai.com", ".openai.azure.com")))
        self.max_tokens_key = "max_tokens"
        self.note_for_admins = lambda topic, text: None  # the core's (Core.note_for_admins): shown with /models

    async def close(self) -> None:
        await self.client.close()

    async def ask(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> LLMAnswer:
        """One answer: text, or tool calls. Raises LLMFailed with a chat-ready message.

        ``timeout_s`` bounds everything here: retries, a probe, corrective rounds."""
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                return await self._ask(messages, tools)
        except TimeoutError as e:
            raise LLMFailed(self._describe(e)) from e
        except openai.APIStatusError as e:
            body = e.body if isinstance(e.body, dict) else {}
            if self.builtin and e.status_code == 503 and body.get("code") == "model_loading":
                raise LLMLoading(self._describe(e), body.get("progress") or {}) from e
            raise LLMFailed(self._describe(e)) from e
        except openai.OpenAIError as e:
            raise LLMFailed(self._describe(e)) from e

    async def _ask(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> LLMAnswer:
        if tools and not self.json_mode:
            answer = await self._native(messages, tools)
            if answer is not None:
                return answer
        if not tools:
            return LLMAnswer(((await self._request(messages)).content or "").strip())
        return await self._json_actions(messages, tools)

    # --- one request, adapted to what the server refuses ---------------------

    async def _request(self, messages: list[dict], tools: list[dict] | None = None,
                       actions: list[dict] | None = None) -> _Message:
        """One completion. Image parts, response_format, max_tokens and the history are each
        dropped or fixed once when the server fails the request because of them."""
        history_cut = images_cut = False
        if not self.vision and has_images(messages):  # turned off earlier in this turn (its messages were built)
            messages = without_images(messages)
        while True:
            kw: dict[str, Any] = {self.max_tokens_key: self.cfg.max_tokens}
            if tools:
                kw.update(tools=tools, tool_choice="auto")
            if actions is not None and self.response_format:
                kw["response_format"] = llm_json.response_format(self.response_format, actions)
            try:
                msg = await self._create(messages, **kw)
            except openai.APIStatusError as e:
                text = _error_text(e)
                images_cut = False  # a cut before this error did not help: images were not the cause
                if e.status_code in (401, 403, 404, 408, 429) or (tools and e.status_code == 400 and "tool" in text):
                    raise  # for the caller: a message, or the JSON format
                if has_images(messages) and self.cfg.vision == "auto" and any(w in text for w in _IMAGE_WORDS):
                    messages, images_cut = without_images(messages), True
                elif (history_cut and has_images(messages) and self.cfg.vision == "auto"
                      and (e.status_code in _HISTORY_ERRORS or any(w in text for w in _CONTEXT_WORDS))):
                    # the current turn alone still fails, and it has images: a server that reads image parts
                    # as text (llama-cpp-python's function-calling formats inline their data: URLs, and
                    # overflow), or one that cannot take a list of parts at all (a GGUF's own Jinja template
                    # in llama-cpp-python: HTTP 500, "can only concatenate str (not "list") to str")
                    messages, images_cut = without_images(messages), True
                elif "response_format" in kw and any(w in text for w in ("response_format", "json_schema", "grammar")):
                    self.response_format = "json_object" if self.response_format == "json_schema" else None
                    log.warning("%s refused response_format (%s); trying %s", self.cfg.model, e,
                                self.response_format or "no response_format")
                elif self.max_tokens_key == "max_tokens" and "max_completion_tokens" in text:
                    self.max_tokens_key = "max_completion_tokens"
                elif e.status_code in _HISTORY_ERRORS and not history_cut:
                    log.warning("%s failed a request (%s); retrying once with the history cut to this turn",
                                self.cfg.model, e)
                    messages, history_cut = sanitise(messages), True
                else:
                    raise
                continue
            if images_cut and self.vision:
                self.vision = False
                log.warning("%s rejects image input (it failed requests with images, answered without); vision is "
                            "off for this model from now on", self.cfg.model)
            return msg

    async def _create(self, messages: list[dict], **kw: Any) -> _Message:
        if not self.cfg.stream:
            msg = (await self.client.chat.completions.create(model=self.cfg.model, messages=messages, **kw)
                   ).choices[0].message
            return _Message(msg.content, [ToolCall(tc.id or _call_id(), tc.function.name, tc.function.arguments or "")
                                          for tc in msg.tool_calls or []])
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
        return _Message("".join(text) or None, [ToolCall(c["id"] or _call_id(), c["name"], c["arguments"])
                                                for c in (calls[i] for i in sorted(calls))])

    # --- native tool calling, and noticing a server that ignores it -----------

    async def _native(self, messages: list[dict], tools: list[dict]) -> LLMAnswer | None:
        """The answer, or None after switching to the JSON format."""
        try:
            msg = await self._request(messages, tools=[strict(t) for t in tools] if self.strict else tools)
        except openai.BadRequestError as e:
            if "tool" not in _error_text(e):
                raise
            log.warning("%s refused native tool calling (%s); using the JSON action format", self.cfg.model, e)
            self.json_mode = True
            return None
        if msg.calls:
            self.tools_checked = True
            return LLMAnswer(msg.content, msg.calls)
        found = llm_json.find_action(msg.content or "", {t["function"]["name"] for t in tools})
        if found:  # a tool call written as text: the server did not parse it as one
            if self.cfg.tools == "auto":
                log.warning("%s wrote a tool call as text: the server ignores tools; using the JSON action "
                            "format", self.cfg.model)
                self.json_mode = True
            return LLMAnswer(None, [ToolCall(_call_id(), found[0], json.dumps(found[1]))])
        if not self.tools_checked:
            self.tools_checked = True
            if not await self._probe():
                log.warning("%s ignores the tools it is sent (no tool call even when asked for one); using the "
                            "JSON action format", self.cfg.model)
                self.json_mode = True
                return None
        return LLMAnswer(msg.content, [])

    async def _probe(self) -> bool:
        """Once per server, after a prose answer: does it make a tool call when plainly asked to?"""
        ask = [{"role": "user", "content": 'Call the tool "tool_check" with word "yes".'}]
        try:
            msg = await self._create(ask, tools=[PROBE], tool_choice="auto", **{self.max_tokens_key: 64})
        except openai.BadRequestError:
            return False
        except openai.OpenAIError as e:
            log.info("tool probe of %s failed (%r); keeping native tool calling", self.cfg.model, e)
            return True
        return any(c.name == "tool_check" for c in msg.calls)

    # --- the JSON action format -----------------------------------------------

    async def _json_actions(self, messages: list[dict], tools: list[dict]) -> LLMAnswer:
        names = {t["function"]["name"] for t in tools}
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
        rest = messages[1:] if system else messages
        # one system message: several break many chat templates
        convo = [{"role": "system", "content": f"{system}\n\n{llm_json.instructions(tools)}".strip()},
                 *llm_json.to_plain(rest)]
        for _ in range(3):
            raw = (await self._request(convo, actions=tools)).content or ""
            try:
                got = llm_json.parse_action(raw, names)
            except llm_json.NotAnAction as e:
                log.info("JSON action rejected (%s): %r", e, raw[:200])
                convo += [{"role": "assistant", "content": raw},
                          {"role": "user", "content": f"That was not valid: {e}. Answer with only one JSON object "
                                                      "as described."}]
                continue
            if isinstance(got, str):
                return LLMAnswer(got)
            return LLMAnswer(None, [ToolCall(_call_id(), got[0], json.dumps(got[1]))])
        raise LLMFailed("The language model did not answer in a form I can use. An admin may need a model "
                        "that supports tool calling.")

    # --- messages for the chat --------------------------------------------------

    def _describe(self, e: Exception) -> str:
        """A short message that says what helps; the address and details go to the log only."""
        cfg = self.cfg
        log.warning("LLM request to %s (model %s) failed: %r", self.base_url, cfg.model, e)
        self.note_for_admins("LLM", f"the last request to {self.base_url} (model {cfg.model}) failed: {e!r}.")
        if isinstance(e, (TimeoutError, openai.APITimeoutError)):
            return f"The language model did not answer in time ({cfg.timeout_s:g} s). Please try again."
        if isinstance(e, openai.AuthenticationError):
            return (f"The language model server refused the bot's API key. An admin needs to check "
                    f"${cfg.api_key_env}.")
        if isinstance(e, openai.APIConnectionError):
            if self.builtin:
                return "The built-in language model is not answering. An admin can find why in the bot's log."
            ollama = f" (for Ollama: `ollama pull {cfg.model}` and `ollama serve`)" if ":11434" in self.base_url else ""
            self.note_for_admins("LLM", f"cannot reach the language model server at {self.base_url} ({e!r}): start "
                                        f"it{ollama}, or leave llm.base_url empty to use the built-in model.")
            return "I cannot reach the language model server right now. Please try again later."
        if isinstance(e, openai.RateLimitError):
            return "The language model server is rate-limiting the bot. Please try again in a minute."
        if isinstance(e, openai.NotFoundError):
            return (f"The language model server does not know the model {cfg.model!r}. An admin needs to check "
                    "llm.model.")
        if isinstance(e, openai.APIStatusError):
            if self.builtin and e.status_code == 503:  # the pool's own words: still loading, or failed to load
                code = e.body.get("code") if isinstance(e.body, dict) else None
                if code == "model_loading":
                    return e.body.get("message") or "The built-in language model is still loading; try again soon."
                return "The built-in language model is not available right now. An admin can see why with /models."
            if e.status_code in (400, 413) and any(w in _error_text(e) for w in _CONTEXT_WORDS):
                return ("This conversation no longer fits the language model's context. Type /reset to start "
                        "afresh, or ask an admin to lower llm.history_tokens.")
            if e.status_code < 500:
                return (f"The language model server refused this request (HTTP {e.status_code}). If it happens "
                        "again, /reset starts this conversation afresh; the admins can see why in the log.")
            return f"The language model server had an error (HTTP {e.status_code}). Please try again in a moment."
        return "The language model failed to answer. Please try again."


_IMAGE_WORDS = ("image", "vision", "multimodal", "mmproj")  # a server refusing image parts says one of them
_CONTEXT_WORDS = ("context", "too long", "too many tokens", "maximum", "exceed", "n_ctx")


def _error_text(e: openai.APIStatusError) -> str:
    return f"{e} {e.body!r}".lower()


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"


def strict(tool: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's strict subset of a function schema: every property required, optional ones
    nullable, no numeric, length or pattern limits (the tools validate those themselves)."""
    f, p = tool["function"], tool["function"]["parameters"]
    props = {}
    for key, spec in p["properties"].items():
        spec = {k: v for k, v in spec.items() if k not in ("minimum", "maximum", "minLength", "maxLength", "pattern")}
        if key not in p.get("required", ()):
            spec["type"] = [spec["type"], "null"]
        props[key] = spec
    params = {**p, "properties": props, "required": list(props), "additionalProperties": False}
    return {"type": "function", "function": {**f, "parameters": params, "strict": True}}


def sanitise(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The system prompt and the current turn (from the last user message), no null contents:
    what a server that choked on something older in the history can still answer."""
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    head = [messages[0]] if messages and messages[0]["role"] == "system" else []
    tail = messages[users[-1]:] if users else messages[len(head):]
    return [dict(m, content=m.get("content") or "") for m in [*head, *tail]]
