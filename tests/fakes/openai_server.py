"""A scripted, loopback OpenAI-compatible chat-completions server for tests.

    async with FakeLLM() as llm:                      # serves http://127.0.0.1:PORT/v1
        llm.on(user="make it winter", tools_include="edit_image").call(
            "edit_image", {"image": "img1", "instruction": "make it winter"})
        llm.on(after_tool="edit_image").reply("Here it is: img2")
        async with llm.client() as client:            # or your own AsyncOpenAI(base_url=llm.base_url)
            ...
        assert llm.requests[0]["tool_choice"] == "auto"

Rules are tried in the order they were added; the first one that matches the request
answers it and is used up (``times=1``; ``times=None`` answers forever), so rules
without conditions act as a queue of replies. A request that no rule matches gets an
HTTP 500 and is kept in ``llm.unmatched``; leaving the ``async with`` block then fails
the test, unless the fake was built with ``strict=False``.

Both ``stream: false`` (one ``chat.completion``) and ``stream: true`` (SSE chunks: role,
content pieces, tool-call deltas with the arguments in pieces, finish reason, optional
usage, ``[DONE]``) are served, from the same rule.

Real servers' quirks, each switched on by a constructor flag, so tests catch what they do
(seen with llama.cpp's C++ server and llama-cpp-python's, issue 13):
- ``null_content_500``: HTTP 500 for any message whose ``content`` is null (llama-cpp-python);
- ``ignore_tools``: ``tools`` and ``tool_choice`` are silently dropped, rules match as if none
  were sent (a model whose chat template has no tool support);
- ``reject_images``: HTTP 500 for any ``image_url`` part (a model without a vision projector);
- ``text_only_500``: HTTP 500 for any message whose ``content`` is a list of parts, with no word
  about images (llama-cpp-python rendering a GGUF's own Jinja chat template);
- ``reject_response_format``: HTTP 400 for any ``response_format``;
- ``context_tokens``: HTTP 400 when the request is larger than this (4 characters a token).
The bot's one-time tool probe (a request whose only tool is ``tool_check``) is answered by the
fake itself, as a model would: a call, or prose when tools are ignored; it is kept in ``probes``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest_asyncio
from aiohttp import web

from tests.fakes.loopback import LoopbackServer

Request = dict[str, Any]  # a chat.completions request body, as the server received it
Pattern = str | re.Pattern[str]  # str: case-insensitive substring; Pattern: re.search


# --- reading a request ------------------------------------------------------------------


def asked(server, words: str) -> int:
    """How many of ``server``'s requests ended on a user message holding ``words`` (a turn handled twice: 2)."""
    return sum(words in text_of(r["messages"][-1]["content"]) for r in server.requests
               if r["messages"][-1]["role"] == "user")


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def last_user_text(req: Request) -> str:
    """Text of the last ``user`` message ('' if none)."""
    users = [m for m in req.get("messages") or [] if m.get("role") == "user"]
    return text_of(users[-1].get("content")) if users else ""


def offered_tools(req: Request) -> list[str]:
    """Names of the function tools in the request's ``tools`` list."""
    return [t.get("function", {}).get("name") for t in req.get("tools") or []]


@dataclass
class ToolResult:
    name: str | None  # from the assistant tool call with the same id
    content: str


def tool_results(req: Request) -> list[ToolResult]:
    """The ``tool`` messages at the end of the conversation (the results just sent back)."""
    messages = req.get("messages") or []
    names = {
        call.get("id"): call.get("function", {}).get("name")
        for m in messages
        if m.get("role") == "assistant"
        for call in m.get("tool_calls") or []
    }
    results = []
    for m in reversed(messages):
        if m.get("role") != "tool":
            break
        results.append(ToolResult(m.get("name") or names.get(m.get("tool_call_id")), text_of(m.get("content"))))
    return results[::-1]


def describe(req: Request) -> str:
    """A one-line summary of what a rule can match on, for error messages."""
    return json.dumps(
        {
            "last_user": last_user_text(req)[:200],
            "tool_results": [[r.name, r.content[:100]] for r in tool_results(req)],
            "tools": offered_tools(req),
        }
    )


def _found(pattern: Pattern, text: str) -> bool:
    if isinstance(pattern, re.Pattern):
        return pattern.search(text) is not None
    return pattern.lower() in text.lower()


# --- rules ------------------------------------------------------------------------------


@dataclass(eq=False, repr=False)
class Rule:
    """When a request matches, answer it this way. Made by ``FakeLLM.on``; its methods chain."""

    user: Pattern | None = None
    after_tool: str | bool | None = None
    result_contains: Pattern | None = None
    tools_include: list[str] = field(default_factory=list)
    when: Callable[[Request], bool] | None = None
    times: int | None = 1
    # the answer
    content: str | None = None
    tool_calls: list[tuple[str, str, str | None]] = field(default_factory=list)  # (name, raw arguments, id)
    error_reply: tuple[int, dict, dict[str, str]] | None = None  # (status, body, headers)
    delay_s: float = 0.0
    hangs: bool = False
    hits: list[Request] = field(default_factory=list)  # the requests it answered

    # -- matching

    @property
    def used_up(self) -> bool:
        return self.times is not None and len(self.hits) >= self.times

    def matches(self, req: Request) -> bool:
        if self.used_up:
            return False
        if self.user is not None and not _found(self.user, last_user_text(req)):
            return False
        if any(name not in offered_tools(req) for name in self.tools_include):
            return False
        results = tool_results(req)
        if self.after_tool is False and results:
            return False
        wants_result = self.after_tool not in (None, False) or self.result_contains is not None
        if wants_result and not any(self._result_fits(r) for r in results):
            return False
        return self.when is None or bool(self.when(req))

    def _result_fits(self, result: ToolResult) -> bool:
        named = not isinstance(self.after_tool, str) or result.name == self.after_tool
        return named and (self.result_contains is None or _found(self.result_contains, result.content))

    # -- answers

    def reply(self, text: str) -> Rule:
        """Answer with this assistant text (``finish_reason`` "stop" unless tool calls are added)."""
        self._not_both(self.error_reply is not None)
        self.content = text
        return self

    def call(self, name: str, arguments: dict | str | None = None, *, call_id: str | None = None) -> Rule:
        """Add a tool call; call again for parallel calls. A str is sent verbatim (malformed JSON too)."""
        self._not_both(self.error_reply is not None)
        raw = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
        self.tool_calls.append((name, raw, call_id))
        return self

    def error(
        self,
        status: int,
        message: str = "",
        *,
        type: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Rule:
        """Answer with an HTTP error and an OpenAI-style body ``{"error": {message, type, code}}``."""
        self._not_both(self.content is not None or bool(self.tool_calls))
        self.error_reply = (status, error_body(status, message, type, code), headers or {})
        return self

    def delay(self, seconds: float) -> Rule:
        """Wait this long before answering (stopping the server cuts the wait short)."""
        self.delay_s = seconds
        return self

    def hang(self) -> Rule:
        """Never answer; the request is released, with a 503, only when the server stops."""
        self.hangs = True
        return self

    @staticmethod
    def _not_both(conflict: bool) -> None:
        if conflict:
            raise ValueError("a rule answers with a reply and/or tool calls, or with an error, not both")

    @property
    def has_answer(self) -> bool:
        return self.hangs or self.error_reply is not None or self.content is not None or bool(self.tool_calls)

    def __repr__(self) -> str:
        conditions = ("user", "after_tool", "result_contains", "tools_include", "when")
        shown = ", ".join(f"{k}={getattr(self, k)!r}" for k in conditions if getattr(self, k) not in (None, []))
        return f"Rule({shown}; used {len(self.hits)}/{'∞' if self.times is None else self.times})"


# --- the wire format --------------------------------------------------------------------


def error_body(status: int, message: str = "", type: str | None = None, code: str | None = None) -> dict:
    """The body an OpenAI-style server sends with an HTTP error."""
    if type is None:
        type = "invalid_request_error" if status < 500 else "server_error"
    if code is None and status == 401:
        code = "invalid_api_key"
    return {"error": {"message": message or f"HTTP {status}", "type": type, "param": None, "code": code}}


def completion_body(head: dict, content: str | None, calls: list[dict], usage: dict) -> dict:
    """A ``chat.completion`` (``stream: false``)."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls" if calls else "stop"}
    return {**head, "object": "chat.completion", "choices": [choice], "usage": usage}


def stream_chunks(head: dict, content: str | None, calls: list[dict], usage: dict | None) -> Iterator[dict]:
    """The ``chat.completion.chunk`` events of the same answer (``stream: true``), in OpenAI's order."""
    head = {**head, "object": "chat.completion.chunk"}

    def chunk(delta: dict, finish_reason: str | None = None) -> dict:
        return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

    yield chunk({"role": "assistant", "content": "" if content is not None else None})
    for piece in _pieces(content or ""):
        yield chunk({"content": piece})
    for index, call in enumerate(calls):
        function = {"name": call["function"]["name"], "arguments": ""}
        yield chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function", "function": function}]})
        for piece in _pieces(call["function"]["arguments"]):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield chunk({}, "tool_calls" if calls else "stop")
    if usage is not None:  # asked for with stream_options.include_usage
        yield {**head, "choices": [], "usage": usage}


def _pieces(text: str, n: int = 3) -> list[str]:
    """``text`` cut into about ``n`` pieces, as a server streams it."""
    size = max(1, math.ceil(len(text) / n))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _json_error(status: int, message: str, **kw: Any) -> web.Response:
    return web.json_response(error_body(status, message, **kw), status=status)


# --- the server -------------------------------------------------------------------------


class FakeLLM(LoopbackServer):
    """A scripted OpenAI-compatible server on 127.0.0.1 (an async context manager)."""

    def __init__(self, *, model: str = "fake-model", api_key: str | None = None, strict: bool = True,
                 null_content_500: bool = False, ignore_tools: bool = False, reject_images: bool = False,
                 reject_response_format: bool = False, context_tokens: int | None = None,
                 text_only_500: bool = False):
        self.model = model
        self.text_only_500 = text_only_500
        self.null_content_500, self.ignore_tools, self.reject_images = null_content_500, ignore_tools, reject_images
        self.reject_response_format, self.context_tokens = reject_response_format, context_tokens
        self.probes: list[Request] = []  # tool probes, answered by the fake itself
        self.api_key = api_key  # when set, any other key gets a 401, as from a real server
        self.strict = strict  # fail on exit if a request matched no rule
        self.rules: list[Rule] = []
        self.requests: list[Request] = []  # every chat request body received, in order
        self.authorizations: list[str | None] = []  # the Authorization header of each of them
        self.unmatched: list[Request] = []
        self.base_url = ""
        self._call_ids = itertools.count(1)  # call_1, call_2, ... across the whole test
        self._completion_ids = itertools.count(1)
        self._stopping = asyncio.Event()

    def on(
        self,
        *,
        user: Pattern | None = None,
        after_tool: str | bool | None = None,
        result_contains: Pattern | None = None,
        tools_include: str | Iterable[str] = (),
        when: Callable[[Request], bool] | None = None,
        times: int | None = 1,
    ) -> Rule:
        """Add a rule; every condition given must hold, none given matches any request.

        user: text in the last user message (case-insensitive; or a compiled regex).
        after_tool: the request ends with a result from this tool (True: any tool;
            False: the request does not end with tool results).
        result_contains: text in one of those tool results (same tool, if after_tool names one).
        tools_include: tool name(s) that must be in the request's ``tools``.
        when: any predicate on the request body.
        times: how many requests the rule answers; None for every one.
        """
        rule = Rule(
            user=user,
            after_tool=after_tool,
            result_contains=result_contains,
            tools_include=[tools_include] if isinstance(tools_include, str) else list(tools_include),
            when=when,
            times=times,
        )
        self.rules.append(rule)
        return rule

    # -- assertions

    @property
    def pending(self) -> list[Rule]:
        """One-shot (or counted) rules not yet used up."""
        return [r for r in self.rules if r.times is not None and not r.used_up]

    def assert_all_matched(self) -> None:
        assert not self.unmatched, "FakeLLM got requests no rule matched:\n" + "\n".join(
            describe(r) for r in self.unmatched
        )

    def assert_all_used(self) -> None:
        assert not self.pending, f"FakeLLM rules never used: {self.pending}"

    def assert_api_key(self, key: str) -> None:
        """Every request so far sent ``Authorization: Bearer <key>``."""
        assert self.authorizations, "FakeLLM got no requests"
        assert set(self.authorizations) == {f"Bearer {key}"}, f"Authorization headers: {self.authorizations}"

    # -- lifecycle

    async def start(self) -> FakeLLM:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._stopping.clear()
        self.base_url = f"{await self._serve(app, shutdown_timeout=2)}/v1"
        return self

    async def stop(self) -> None:
        self._stopping.set()  # releases hanging and delayed requests
        await self._close()

    def _after_stop(self) -> None:
        if self.strict:
            self.assert_all_matched()

    def client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        """An ``openai.AsyncOpenAI`` for this server: key "test", no retries (override by kwargs)."""
        return openai.AsyncOpenAI(**{"base_url": self.base_url, "api_key": "test", "max_retries": 0, **kwargs})

    # -- handlers

    async def _models(self, request: web.Request) -> web.Response:
        model = {"id": self.model, "object": "model", "created": 0, "owned_by": "fake-llm"}
        return web.json_response({"object": "list", "data": [model]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization")
        try:
            req = await request.json()
        except ValueError:
            req = {"not_json": await request.text()}
        if offered_tools(req) == ["tool_check"]:
            self.probes.append(req)
            probe = Rule(content="Yes." if self.ignore_tools else None)
            if not self.ignore_tools:
                probe.call("tool_check", {"word": "yes"})
            return await self._answer(request, req, probe)
        self.requests.append(req)
        self.authorizations.append(auth)
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            return _json_error(401, "Incorrect API key provided.")
        refused = self._quirks(req)
        if refused is not None:
            return refused
        if self.ignore_tools:
            req = {k: v for k, v in req.items() if k not in ("tools", "tool_choice")}

        rule, why = self._pick(req)
        if rule is None:
            self.unmatched.append(req)
            message = f"FakeLLM: {why}. Request: {describe(req)}. Rules: {self.rules}"
            return _json_error(500, message, type="fake_llm_unmatched", code="unmatched")
        rule.hits.append(req)

        if rule.hangs or rule.delay_s:
            if await self._wait_for_stop(None if rule.hangs else rule.delay_s):
                return _json_error(503, "FakeLLM stopped before answering")
        if rule.error_reply is not None:
            status, body, headers = rule.error_reply
            return web.json_response(body, status=status, headers=headers)
        return await self._answer(request, req, rule)

    def _quirks(self, req: Request) -> web.Response | None:
        """The error a real server with the switched-on quirks answers to ``req``, if any."""
        messages = req.get("messages") or []
        if self.null_content_500 and any("content" in m and m["content"] is None for m in messages):
            return _json_error(500, "'NoneType' object has no attribute 'strip'", type="server_error")
        parts = [p for m in messages if isinstance(m.get("content"), list) for p in m["content"]]
        if self.text_only_500 and any(isinstance(m.get("content"), list) for m in messages):
            return _json_error(500, 'can only concatenate str (not "list") to str')
        if self.reject_images and any(p.get("type") == "image_url" for p in parts):
            return _json_error(500, "image input is not supported - hint: if this is unexpected, you may need "
                               "to provide the mmproj")
        if self.reject_response_format and "response_format" in req:
            return _json_error(400, "response_format is not supported by this server")
        size = len(json.dumps(messages)) + len(json.dumps(req.get("tools") or []))
        if self.context_tokens and size // 4 > self.context_tokens:
            return _json_error(400, f"the request exceeds the available context size ({self.context_tokens} "
                               "tokens), try increasing it", type="exceed_context_size_error")
        return None

    def _pick(self, req: Request) -> tuple[Rule | None, str]:
        """The first rule matching ``req``, or None and why not."""
        if "not_json" in req:
            return None, "the request body is not JSON"
        try:
            rule = next((r for r in self.rules if r.matches(req)), None)
        except Exception as exc:  # a broken `when=` predicate must fail the test, not the server
            return None, f"matching raised {exc!r}"
        if rule is None:
            return None, "no rule matched"
        if not rule.has_answer:
            return None, f"{rule!r} has no answer (add .reply, .call, .error or .hang)"
        return rule, ""

    async def _wait_for_stop(self, seconds: float | None) -> bool:
        """Sleep ``seconds`` (None: forever); True if the server began stopping meanwhile."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
            return True
        except TimeoutError:
            return False

    async def _answer(self, request: web.Request, req: Request, rule: Rule) -> web.StreamResponse:
        # tool-call ids are fresh per answer, so a repeated rule never reuses one
        calls = []
        for name, arguments, call_id in rule.tool_calls:
            function = {"name": name, "arguments": arguments}
            calls.append({"id": call_id or f"call_{next(self._call_ids)}", "type": "function", "function": function})
        model = req.get("model") or self.model
        head = {"id": f"chatcmpl-{next(self._completion_ids)}", "created": int(time.time()), "model": model}
        prompt = len(json.dumps(req.get("messages", []))) // 4 + 1  # rough token counts
        completion = len((rule.content or "") + "".join(c["function"]["arguments"] for c in calls)) // 4 + 1
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        if not req.get("stream"):
            return web.json_response(completion_body(head, rule.content, calls, usage))

        if not (req.get("stream_options") or {}).get("include_usage"):
            usage = None
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            for chunk in stream_chunks(head, rule.content, calls, usage):
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away mid-stream; nothing to tell it
        return response


@pytest_asyncio.fixture
async def fake_llm() -> AsyncIterator[FakeLLM]:
    """A started ``FakeLLM`` (strict); register with ``pytest_plugins`` or import into a test module."""
    async with FakeLLM() as llm:
        yield llm
