"""The core's entry points for adapters: a message, a direct command, an admin command.

Adapters build a Turn and a Reply and call ``Core.handle`` (a message for the
agent), ``Core.direct`` (a slash command that runs one tool, no LLM needed),
``Core.reset`` or ``Core.admin``. Errors never escape to the adapter: users
get a message, the log gets the traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any

import settings
from core.agent import images_to_post, run_turn
from core.errors import GENERIC, BadImage, NotAllowed, UserFacingError
from core.images import ImageStore
from core.llm import LLM
from core.pool_client import PoolClient, PoolUnavailable
from core.safety import describe, policy_for, summary, with_notice
from core.store import NOTE, Store
from core.tools import BY_NAME
from core.tools.base import ToolContext, bytes_pair, bytes_text, call, duration_text
from core.turn import OutImage, Outcome, Reply, Turn

log = logging.getLogger(__name__)
HELP = """I can talk about, draw and edit images. Mention me with a request, with or without an image:
- "draw a cat on a sofa"  - "make it look like winter"  - "what breed is this dog?"
- "find the edges of img2 and draw a house that follows them"  - "remove the car"
Images get ids like img1; say them to point at an image. Commands: /imagine, /caption, /edit, /reset, /help.
Admins: /models, /safety, /reload, /load, /unload."""


class Throttled:
    """Pass status updates on at most once per ``interval`` seconds (platform rate limits)."""

    def __init__(self, reply: Reply, interval: float):
        self.reply, self.interval, self._last = reply, interval, 0.0
        self.shown = False

    async def __call__(self, text: str | None) -> None:
        now = time.monotonic()
        if text is None:
            if self.shown:
                await self.reply.status(None)
                self.shown = False
            return
        if self.shown and now - self._last < self.interval:
            return
        self._last, self.shown = now, True
        await self.reply.status(text)


class Core:
    def __init__(self, config: settings.Config, store: Store, images: ImageStore, pool: PoolClient,
                 llm: LLM | None, status_interval: float = 1.0):
        self.config, self.store, self.images, self.pool, self.llm = config, store, images, pool, llm
        self.status_interval = status_interval
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._busy: dict[str, int] = defaultdict(int)
        self._loaded: tuple[float, set[str]] = (0.0, set())

    # --- helpers ------------------------------------------------------------

    async def loaded_models(self) -> set[str]:
        """Models ready in the pool, or loading (a job waits for them); cached for two seconds."""
        at, names = self._loaded
        if time.monotonic() - at > 2:
            try:
                names = {m.name for m in await self.pool.models() if m.state in ("ready", "loading")}
            except PoolUnavailable:
                names = set()
            self._loaded = (time.monotonic(), names)
        return names

    def _context(self, turn: Turn, status: Throttled) -> ToolContext:
        return ToolContext(turn.session_key, turn.user_id, self.images, self.pool, self.config.limits, status,
                           policy=policy_for(self.config.safety, turn))

    def _out(self, ids: list[str], session: str) -> list[OutImage]:
        rows = [self.store.image(session, i) for i in ids]
        return [OutImage(r.image_id, self.images.path(r), f"{r.image_id}.png") for r in rows if r]

    async def _finish(self, reply: Reply, status: Throttled, outcome: Outcome, session: str) -> Outcome:
        try:
            await reply.send(outcome.text, self._out(outcome.images, session))
            await status(None)  # after the answer, so the thread is never empty in between
        except Exception:  # the platform refused the answer; the session already holds it
            log.exception("could not post the answer in %s", session)
        return outcome

    async def _guarded(self, turn: Turn, reply: Reply, work) -> Outcome:
        """Per-user job cap, one turn at a time per session, and no exception reaching the adapter."""
        status = Throttled(reply, self.status_interval)
        if self._busy[turn.user_id] >= self.config.limits.per_user_jobs:
            return await self._finish(reply, status, Outcome(
                f"You already have {self._busy[turn.user_id]} requests running; please wait for one to finish.",
                error=True), turn.session_key)
        self._busy[turn.user_id] += 1
        try:
            async with self._locks[turn.session_key]:
                try:
                    outcome = await work(status)
                except UserFacingError as e:
                    outcome = Outcome(str(e), error=True)
                except Exception:
                    log.exception("turn in %s failed", turn.session_key)
                    outcome = Outcome(GENERIC, error=True)
                return await self._finish(reply, status, outcome, turn.session_key)
        finally:
            self._busy[turn.user_id] -= 1

    # --- a message ----------------------------------------------------------

    async def handle(self, turn: Turn, reply: Reply) -> Outcome:
        """A message for the bot: store uploads, then let the agent answer."""
        await reply.typing()
        return await self._guarded(turn, reply, lambda status: self._handle(turn, status))

    async def _handle(self, turn: Turn, status: Throttled) -> Outcome:
        ctx = self._context(turn, status)
        uploaded, problems = await self._ingest(turn, ctx)
        lines = [turn.text.strip()] if turn.text.strip() else []
        for row in uploaded:
            caption = f", shows: {row.caption}" if row.caption else ""
            lines.append(f"[uploaded {row.image_id} ({row.params.get('filename')}): {row.width}x{row.height}{caption}]")
        if not lines:
            return Outcome(" ".join(problems) or "Say what you would like me to do, or attach an image.",
                           error=bool(problems))
        self.store.add_message(turn.session_key, "user", "\n".join(lines), user=turn.user_name)
        if not turn.text.strip():  # an image with no words: acknowledge, no LLM round needed
            ids = ", ".join(f"{r.image_id}" + (f" ({r.caption})" if r.caption else "") for r in uploaded)
            text = " ".join([*problems, f"Got {ids}. What should I do with it?"])
            self.store.add_message(turn.session_key, "assistant", text)
            return Outcome(text)
        if self.llm is None:
            return Outcome("No language model is set up, so I can only run commands: " + HELP.splitlines()[-2],
                           error=True)
        llm = self.config.llm
        final = await run_turn(self.llm, ctx, await self.loaded_models(), max_rounds=llm.max_tool_rounds,
                               token_budget=llm.history_tokens, turn_timeout=llm.turn_timeout_s)
        text = with_notice(ctx.withheld, " ".join([*problems, final.text]))
        return Outcome(text, images_to_post(ctx, final.text), error=final.error)

    async def _ingest(self, turn: Turn, ctx: ToolContext) -> tuple[list, list[str]]:
        """Validate and store attachments; caption them when a captioning model is loaded."""
        rows, problems = [], []
        for att in turn.attachments:
            try:
                rows.append(self.images.ingest(turn.session_key, att.filename, att.data))
            except BadImage as e:
                log.info("refused upload in %s: %s", turn.session_key, e)
                problems.append(str(e))
        if rows and "ImageCaptioning" in await self.loaded_models():
            for row in rows:
                await call(BY_NAME["caption_image"], ctx, {"image": row.image_id})
            rows = [self.store.image(turn.session_key, r.image_id) for r in rows]
        return rows, problems

    # --- direct commands ----------------------------------------------------

    async def direct(self, turn: Turn, reply: Reply, tool: str, args: dict[str, Any]) -> Outcome:
        """Run one tool without the LLM (slash commands). An attachment becomes the ``image`` argument."""
        await reply.typing()

        async def work(status: Throttled) -> Outcome:
            ctx = self._context(turn, status)
            uploaded, problems = await self._ingest(turn, ctx)
            if problems:
                return Outcome(" ".join(problems), error=True)
            if uploaded and "image" in BY_NAME[tool].parameters and not args.get("image"):
                args["image"] = uploaded[0].image_id
            what = " ".join(f"{k}={v}" for k, v in args.items())
            self.store.add_message(turn.session_key, "user", f"/{tool} {what}", user=turn.user_name)
            result = await call(BY_NAME[tool], ctx, args)
            text = ctx.withheld[0] if ctx.withheld else result.text.removeprefix("Error: ")
            self.store.add_message(turn.session_key, "assistant", text, kind=None if result.ok else NOTE)
            return Outcome(text, ctx.made, error=not result.ok)

        return await self._guarded(turn, reply, work)

    async def reset(self, session_key: str) -> str:
        self.store.reset(session_key)
        return "This conversation is cleared: I have forgotten its messages and images."

    # --- admin --------------------------------------------------------------

    async def admin(self, turn: Turn, action: str, model: str | None = None, device: str | None = None) -> str:
        """/models, /safety, /reload, /load, /unload: refused with a message for non-admins."""
        if not turn.is_admin:
            log.warning("refused /%s from non-admin %s (%s)", action, turn.user_id, turn.platform)
            raise NotAllowed(f"Sorry, /{action} is for the bot's admins only.")
        if action == "safety":
            try:
                return describe(self.config.safety, turn, await self.pool.models())
            except PoolUnavailable:
                return describe(self.config.safety, turn, None)
        try:
            if action == "models":
                infos = await self.pool.models()
                return format_models(infos) + "\n" + summary(self.config.safety, infos)
            if action == "reload":
                reply = await self.pool.reload(model)
            elif action == "load":
                reply = await self.pool.load(model or "", device)
            elif action == "unload":
                reply = await self.pool.unload(model or "")
            else:
                raise NotAllowed(f"Unknown admin command /{action}.")
        except PoolUnavailable as e:
            return str(e)
        self._loaded = (0.0, set())
        return reply.get("message", "Done.")


def format_models(infos) -> str:
    """One line per model: where it is, whether its weights are on the device now
    (offloaded: waiting in CPU RAM under a residency budget), its size and last use;
    while it downloads or loads, how far it got and about how long is left."""
    if not infos:
        return "No models are configured."
    lines = []
    for m in infos:
        where = (", resident" if m.resident else ", offloaded to CPU RAM") if m.state == "ready" else ""
        size = f"{m.bytes / 2**20:,.0f} MiB" if m.bytes else "no weights"
        shared = f", {m.shared_bytes / 2**20:,.0f} MiB shared" if m.shared_bytes else ""
        if m.last_used is None:
            used = ", not used yet" if m.state == "ready" else ""
        else:
            ago = max(0, time.time() - m.last_used)
            used = ", last used " + (f"{ago:.0f} s" if ago < 90 else f"{ago / 60:.0f} min" if ago < 5400
                                     else f"{ago / 3600:.1f} h") + " ago"
        err = f" - {m.error}" if m.error else ""
        state = m.state
        if m.state == "loading" and m.phase:  # downloading 1.2 of 2.1 GB / loading 2.1 GB of files
            state = m.phase
            if m.download_total:
                size = (bytes_pair(m.downloaded, m.download_total) if m.phase == "downloading"
                        else f"{bytes_text(m.download_total)} of files")
            size += f", about {duration_text(m.eta_s)} left" if m.eta_s else ""
        lines.append(f"{m.name}: {state} on {m.device} ({m.dtype}){where}, {size}{shared}{used}{err}")
    return "\n".join(lines)
