"""The agent loop: the LLM decides, tools act, the session store remembers.

Each round returns a typed next step, like openai-agents' runner:
``Final`` (answer the user) or ``RunAgain`` (tool results to show the LLM).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from core import history
from core.llm import LLM, LLMFailed, ToolCall
from core.tools import BY_NAME, Tool, available
from core.tools.base import ToolContext, ToolResult, call

log = logging.getLogger(__name__)


@dataclass
class Final:
    text: str
    error: bool = False


@dataclass
class RunAgain:
    results: list[ToolResult] = field(default_factory=list)


async def run_turn(llm: LLM, ctx: ToolContext, loaded: set[str], *, max_rounds: int,
                   token_budget: int, turn_timeout: float) -> Final:
    """Answer the user's latest message, already in the store.

    1. Rebuild the conversation from the store: system prompt with the image
       list, then the history that fits the token budget.
    2. Offer the tools whose models are loaded, image ids as enums.
    3. Ask the LLM. Text is the final answer: store it, stop.
    4. Tool calls are stored, run (read-only ones side by side, image-making
       ones in order), and their results stored; go to 1.
    5. Stop early on a repeated call, a pool that is gone, the round cap or the
       turn deadline, with a short honest message; what was made is kept.
    """
    store = ctx.images.store
    seen: set[str] = set()
    try:
        async with asyncio.timeout(turn_timeout):
            for _ in range(max_rounds):
                step = await _round(llm, ctx, loaded, seen, token_budget)
                if isinstance(step, Final):
                    store.add_message(ctx.session, "assistant", step.text)
                    return step
    except TimeoutError:
        text = f"I ran out of time for this message ({turn_timeout:g} s)."
    except LLMFailed as e:
        text = str(e)
    else:
        text = f"I stopped after {max_rounds} steps without finishing."
    if ctx.made:
        text += f" Here is what I made so far: {', '.join(ctx.made)}."
    store.add_message(ctx.session, "assistant", text)
    return Final(text, error=True)


async def _round(llm: LLM, ctx: ToolContext, loaded: set[str], seen: set[str], budget: int) -> Final | RunAgain:
    store = ctx.images.store
    rows = store.images(ctx.session)
    tools = available(loaded)
    offered = [t for t in tools if not t.needs_image() or rows]
    messages = history.build(store, ctx.session, rows, budget)
    answer = await llm.ask(messages, [t.schema([r.image_id for r in rows]) for t in offered])
    if not answer.tool_calls:
        return Final((answer.text or "").strip() or "(no answer)")
    calls = answer.tool_calls
    store.add_message(ctx.session, "assistant", answer.text, tool_calls=[
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls])
    results = await _run_calls(ctx, calls, {t.name: t for t in offered}, seen)
    for c, r in zip(calls, results):
        store.add_message(ctx.session, "tool", r.text, tool_call_id=c.id, name=c.name)
    gone = [r for r in results if r.fatal]
    if gone:
        return Final(gone[0].text.removeprefix("Error: "), error=True)
    return RunAgain(results)


async def _run_calls(ctx: ToolContext, calls: list[ToolCall], tools: dict[str, Tool],
                     seen: set[str]) -> list[ToolResult]:
    """Read-only calls run side by side; calls that make images run one after another, in order."""
    results: list[ToolResult | None] = [None] * len(calls)
    parallel = []
    for i, c in enumerate(calls):
        tool = tools.get(c.name)
        if tool is not None and tool.read_only:
            parallel.append((i, c, tool))
    done = await asyncio.gather(*(_one(ctx, c, tool, seen) for _, c, tool in parallel))
    for (i, _, _), r in zip(parallel, done):
        results[i] = r
    for i, c in enumerate(calls):
        if results[i] is None:
            results[i] = await _one(ctx, c, tools.get(c.name), seen)
    return results


async def _one(ctx: ToolContext, c: ToolCall, tool: Tool | None, seen: set[str]) -> ToolResult:
    if tool is None:
        known = BY_NAME.get(c.name)
        why = "its models are not loaded right now" if known else "there is no such tool"
        return ToolResult(f"Error: {c.name} cannot be used: {why}.", ok=False)
    try:
        args: Any = json.loads(c.arguments or "{}")
    except json.JSONDecodeError:
        return ToolResult(f"Error: the arguments for {c.name} were not valid JSON: {c.arguments[:200]!r}.", ok=False)
    key = f"{c.name}:{json.dumps(args, sort_keys=True)}"
    if key in seen:
        return ToolResult(f"Error: {c.name} was already called with these arguments this turn; its result is "
                          "above. Use it, or answer the user.", ok=False)
    seen.add(key)
    log.info("session %s: %s %s", ctx.session, c.name, c.arguments[:200])
    return await call(tool, ctx, args)


def images_to_post(ctx: ToolContext) -> list[str]:
    """What the answer attaches: the images made this turn, then those the user asked to see again
    (show_image), in order, once each. Ids merely named in the text (a list, an error message, the
    user's own photo in a caption) are not attached."""
    return list(dict.fromkeys([*ctx.made, *ctx.shown]))
