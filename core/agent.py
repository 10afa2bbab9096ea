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

from core import history, tokens, toolset, vision
from core.llm import LLM, LLMAnswer, LLMFailed, LLMLoading, ToolCall
from core.store import NOTE
from core.tools import BY_NAME, Tool, available
from core.tools.base import ToolContext, ToolResult, call, image_ids, waiting_text
from gpu_pool.protocol import Event

log = logging.getLogger(__name__)
LOADING_POLL_S = 3.0  # how often a turn asks again while the built-in LLM loads
ARG_CHARS = 1000  # of one text argument of a stored tool call
RESULT_CHARS = 1500  # of a stored tool result


@dataclass
class Final:
    text: str
    error: bool = False


@dataclass
class RunAgain:
    results: list[ToolResult] = field(default_factory=list)


_RUNNING = ToolResult("", ok=False)
MAX_UNLOCKS = 2  # more_tools calls in one turn; SmolLM2-135M unlocked a new group every round until the cap
MAX_CHAIN = 2  # calls of one tool each on the image the one before made (make_sketch img1, img2, img3 ...)


@dataclass
class _TurnState:
    seen: dict[str, ToolResult] = field(default_factory=dict)  # calls made this turn, their results (repeat guard)
    repeated: ToolResult | None = None  # a call repeated after it succeeded: its result ends the turn
    chains: dict[str, tuple[int, ToolResult]] = field(default_factory=dict)  # tool -> (calls on its own output, last)
    groups: set[str] = field(default_factory=set)  # tool groups unlocked with more_tools
    capped: bool = False  # an image was refused: the per-turn cap was reached


async def run_turn(llm: LLM, ctx: ToolContext, loaded: set[str], *, max_rounds: int,
                   token_budget: int, turn_timeout: float) -> Final:
    """Answer the user's latest message, already in the store.

    1. Rebuild the conversation from the store: system prompt with the image
       list, then the history that fits the token budget left after the tools
       and image parts of this request.
    2. Offer the core tools, the groups the user's words or the history point
       at, and ``more_tools`` for the rest; image ids listed once.
    3. Ask the LLM (while the built-in one still loads: say how far, wait, ask again). Text is the
       final answer: store it, stop.
    4. Tool calls are stored (arguments bounded), run (read-only ones side by
       side, image-making ones in order, at most ``limits.images_per_turn``
       images), and their results stored; go to 1.
    5. A call repeated after it succeeded ends the turn with that call's result as
       the answer (a small model that has what it asked for but loops instead of
       answering). So does a tool called a third time on the image its previous call
       made (``MAX_CHAIN``: a weak model sketching its own sketch until the round cap).
       Stop early on a pool that is gone, the round cap or the turn deadline (the LLM's
       rounds, retries and image jobs all count), with a short honest message stored as
       a note the LLM never reads as its own words; what was made is kept.
    """
    store = ctx.images.store
    state = _TurnState()
    try:
        async with asyncio.timeout(turn_timeout) as ctx.waits.deadline:  # jobs pause it while a model downloads
            for _ in range(max_rounds):
                step = await _round(llm, ctx, loaded, state, token_budget)
                if isinstance(step, Final):
                    if state.capped:
                        step.text += (f" (I made {ctx.limits.images_per_turn} images, the most for one message; "
                                      "ask again for more.)")
                    store.add_message(ctx.session, "assistant", step.text, kind=NOTE if step.error else None)
                    return step
    except TimeoutError:
        text = f"I ran out of time for this message ({turn_timeout:g} s)."
    except LLMFailed as e:
        text = str(e)
    else:
        text = f"I stopped after {max_rounds} steps without finishing."
    if ctx.made:
        text += f" Here is what I made so far: {', '.join(ctx.made)}."
    store.add_message(ctx.session, "assistant", text, kind=NOTE)
    return Final(text, error=True)


async def _round(llm: LLM, ctx: ToolContext, loaded: set[str], state: _TurnState, budget: int) -> Final | RunAgain:
    store = ctx.images.store
    rows = store.images(ctx.session)
    usable = [t for t in available(loaded) if not t.needs_image() or rows]
    stored = store.messages(ctx.session)  # read once: both fits below are built from it
    schemas = _offer(usable, [r.image_id for r in rows], state, history.build(store, ctx.session, rows, budget, stored))
    parts = await vision.parts(ctx.images, rows, ctx.made, llm.cfg.vision_images) if llm.vision else []
    spare = budget - tokens.tools(schemas) - tokens.IMAGE_TOKENS * (len(parts) // 2)
    messages = vision.attach(history.build(store, ctx.session, rows, spare, stored), parts)
    answer = await _ask_when_ready(llm, ctx, messages, schemas)
    if not answer.tool_calls:
        return Final((answer.text or "").strip() or "(no answer)")
    calls = answer.tool_calls
    store.add_message(ctx.session, "assistant", answer.text or "", tool_calls=[
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": bounded(c.arguments)}}
        for c in calls])
    results = await _run_calls(ctx, calls, {t.name: t for t in usable}, state, bool(rows))
    for c, r in zip(calls, results):
        store.add_message(ctx.session, "tool", history.clip(r.text, RESULT_CHARS), tool_call_id=c.id, name=c.name)
    gone = [r for r in results if r.fatal]
    if gone:
        return Final(gone[0].text.removeprefix("Error: "), error=True)
    if state.repeated is not None:
        log.info("session %s: the LLM repeated a call that succeeded, or chained a tool on its own output; "
                 "the last result is the answer", ctx.session)
        return Final(state.repeated.text)
    return RunAgain(results)


async def _ask_when_ready(llm: LLM, ctx: ToolContext, messages: list[dict], schemas: list[dict]) -> LLMAnswer:
    """Ask; while the built-in model is still downloading or loading (its first start), say how far it got
    and ask again, the wait not counting against the turn's deadline, as for an image model's (``Waits``)."""
    held = False
    try:
        while True:
            try:
                return await llm.ask(messages, schemas)
            except LLMLoading as e:
                if not held:
                    ctx.waits.hold()
                    held = True
                p = e.progress
                waiting = Event("progress", "", step=0, total=0, phase=p.get("phase") or "loading",
                                downloaded=p.get("downloaded"), download_total=p.get("download_total"),
                                eta_s=p.get("eta_s"))
                await ctx.status(waiting_text("The language model", waiting))
                await asyncio.sleep(LOADING_POLL_S)
    finally:
        if held:
            ctx.waits.release()


def _offer(usable: list[Tool], ids: list[str], state: _TurnState, shown: list[dict[str, Any]]) -> list[dict]:
    """Schemas of the core tools, the groups the user's words, this turn's ``more_tools`` calls
    or the shown history point at, and ``more_tools`` while some group is still hidden and this turn
    has unlocked fewer than ``MAX_UNLOCKS``."""
    users = [m for m in shown if m["role"] == "user"]
    said = users[-1]["content"] if users else ""
    groups = state.groups | toolset.route(said if isinstance(said, str) else "")
    groups |= {toolset.GROUP_OF[n] for n in history.used_tools(shown) if n in toolset.GROUP_OF}
    offered = toolset.select(usable, groups)
    schemas = [toolset.schema(t, ids) for t in offered]
    hidden = toolset.hidden_groups(usable, offered)
    if len(state.groups) >= MAX_UNLOCKS:  # a model browsing group after group must now choose a tool or answer
        hidden = []
    return [*schemas, toolset.more_tools_schema(hidden)] if hidden else schemas


def bounded(arguments: str) -> str:
    """Tool-call arguments as they are stored and sent again: valid JSON (servers parse the history's
    calls; a broken one fails every later request), long text values cut."""
    try:
        args = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return "{}"  # the tool result says what was wrong with them
    if isinstance(args, dict):
        args = {k: history.clip(v, ARG_CHARS) if isinstance(v, str) else v for k, v in args.items()}
    return json.dumps(args)


async def _run_calls(ctx: ToolContext, calls: list[ToolCall], tools: dict[str, Tool], state: _TurnState,
                     have_images: bool) -> list[ToolResult]:
    """Read-only calls run side by side; calls that make images run one after another, in order."""
    results: list[ToolResult | None] = [None] * len(calls)
    parallel = []
    for i, c in enumerate(calls):
        tool = tools.get(c.name)
        if c.name == toolset.MORE_TOOLS or (tool is not None and tool.read_only):
            parallel.append((i, c, tool))
    done = await asyncio.gather(*(_one(ctx, c, tool, state, have_images, set(tools)) for _, c, tool in parallel))
    for (i, _, _), r in zip(parallel, done):
        results[i] = r
    for i, c in enumerate(calls):
        if results[i] is None:
            results[i] = await _one(ctx, c, tools.get(c.name), state, have_images, set(tools))
    return results


async def _one(ctx: ToolContext, c: ToolCall, tool: Tool | None, state: _TurnState, have_images: bool,
               loaded: set[str]) -> ToolResult:
    if c.name == toolset.MORE_TOOLS:
        return _more_tools(c, state, loaded)
    if tool is None:
        known = BY_NAME.get(c.name)
        if known is None:
            why = "there is no such tool"
        elif known.needs_image() and not have_images:
            why = "there is no image in this conversation yet (upload one, or draw one with generate_image)"
        else:
            why = "its models are not loaded right now"
        return ToolResult(f"Error: {c.name} cannot be used: {why}.", ok=False)
    try:
        args: Any = json.loads(c.arguments or "{}")
    except json.JSONDecodeError:
        return ToolResult(f"Error: the arguments for {c.name} were not valid JSON: {c.arguments[:200]!r}.", ok=False)
    if isinstance(args, dict):  # strict schemas send null for an optional argument left out
        args = {k: v for k, v in args.items() if v is not None}
    key = f"{c.name}:{json.dumps(args, sort_keys=True)}"
    if key in state.seen:
        if state.seen[key].ok:
            state.repeated = state.seen[key]
        return ToolResult(f"Error: {c.name} was already called with these arguments this turn; its result is "
                          "above. Use it, or answer the user.", ok=False)
    inputs = {v for _, v in image_ids(tool, args)} if isinstance(args, dict) else set()
    length, last = state.chains.get(c.name, (0, None))
    on_own_output = last is not None and bool(inputs & set(last.images))
    if on_own_output and length >= MAX_CHAIN:
        state.repeated = last
        return ToolResult(f"Error: not done: {c.name} was already applied to its own result {length} times this "
                          "turn. Answer the user with what you made.", ok=False)
    cap = ctx.limits.images_per_turn
    if not tool.read_only and len(ctx.made) >= cap:
        state.capped = True
        return ToolResult(f"Error: not done: {cap} images is the most for one message. Tell the user what you "
                          "made and that they can ask again for more.", ok=False)
    log.info("session %s: %s %s", ctx.session, c.name, c.arguments[:200])
    state.seen[key] = _RUNNING  # the same call twice in one round runs once
    state.seen[key] = result = await call(tool, ctx, args)
    if result.ok and result.images:
        state.chains[c.name] = (length + 1 if on_own_output else 1, result)
    return result


def _more_tools(c: ToolCall, state: _TurnState, usable: set[str]) -> ToolResult:
    try:
        group = json.loads(c.arguments or "{}").get("group")
    except (json.JSONDecodeError, AttributeError):
        group = None
    if group not in toolset.GROUPS:
        return ToolResult(f"Error: more_tools needs 'group', one of: {', '.join(toolset.GROUPS)}.", ok=False)
    state.groups.add(group)
    names = [n for n in toolset.GROUPS[group] if n in usable]
    return ToolResult(f"You can now use: {', '.join(names)}." if names else f"No {group} tool is available.")


def images_to_post(ctx: ToolContext) -> list[str]:
    """What the answer attaches: the images made this turn, then those the user asked to see again
    (show_image), in order, once each. Ids merely named in the text (a list, an error message, the
    user's own photo in a caption) are not attached."""
    return list(dict.fromkeys([*ctx.made, *ctx.shown]))
