"""The core's entry points for adapters: a message, a direct command, an admin command.

Adapters build a Turn and a Reply and call ``Core.handle`` (a message for the
agent), ``Core.direct`` (a slash command that runs one tool, no LLM needed) or
``Core.command`` (the other commands of core/commands.py, answered with a text,
a refusal included); a button under an image is ``Core.press``
(what it does) then, for the buttons that make an image, ``Core.act``.
Each asks the access policy first (core/access.py: blocks, role gates, quotas, cooldowns), before
anything reaches the pool.
Errors never escape to the adapter: users get a message, the log gets the
traceback.

A message takes its place in its conversation the moment ``handle`` is called
(before its files are downloaded), and the conversation's messages run one at a
time in that order. ``stop`` ends the bot's work honestly: new messages and the
turns still running after a grace period are answered "I'm restarting".
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import settings
from core import actions, admin, commands, history, inflight, lineup
from core.access import Access, models_of
from core.agent import images_to_post, run_turn
from core.commands import HELP
from core.errors import DISK_FULL, GENERIC, UserFacingError, no_room
from core.fairness import UserQueue
from core.images import ImageStore, encode
from core.llm import LLM
from core.ordering import InOrder
from core.pool_client import PoolClient, PoolUnavailable
from core.progress import Progress
from core.safety import policy_for, with_notice
from core.store import NOTE, ImageRow, Store
from core.tools import BY_NAME
from core.tools.base import ToolContext, ToolResult, call
from core.turn import CancelButton, OutImage, Outcome, Press, Reply, Turn, quoted
from settings.models import DRAWING_MODELS

log = logging.getLogger(__name__)
RESTARTING = "I'm restarting; please ask again."
CLEARED = "This conversation is cleared: I have forgotten its messages and images."
RESEND = "I did not act on your message: attach an image and send it again."
DECODING_AT_ONCE = 2  # large uploads decoded side by side (each can take hundreds of MB for a moment)
_RESET = re.compile(r"/?reset[.!]?", re.IGNORECASE)


class Core:
    def __init__(self, config: settings.Config, store: Store, images: ImageStore, pool: PoolClient,
                 llm: LLM | None, status_interval: float = 1.0):
        self.config, self.store, self.images, self.pool, self.llm = config, store, images, pool, llm
        self.status_interval = status_interval  # also the delay before a status first shows
        self.jobs = UserQueue(pool, config.limits.per_user_jobs)  # what tools submit through
        self.access = Access(config, store)  # blocks, role gates, quotas, cooldowns (core/access.py)
        self.requests = inflight.Book()  # requests from arrival to answer: /queue and Cancel read it
        self.stopping = False
        self.admin_notes: dict[str, str] = {}  # adapter problems worth an admin's eye, shown with /models
        if llm is not None:
            llm.note_for_admins = self.note_for_admins  # the LLM server's failures too: users get a short sentence
        self._order = InOrder()
        self._work: set[asyncio.Task] = set()  # turns' work in flight
        self._turns = 0  # turns between arrival and their status message gone
        self._decoding = asyncio.Semaphore(DECODING_AT_ONCE)
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

    def note_for_admins(self, topic: str, text: str) -> None:
        """Keep the latest problem about ``topic`` for /models (the log has it too)."""
        self.admin_notes[topic] = f"{time.strftime('%H:%M')} {text}"

    def thread_session(self, thread: str) -> str | None:
        """The conversation a thread continues, if one was linked (see ``link_thread``)."""
        return self.store.thread_session(thread)

    def link_thread(self, thread: str, session: str) -> None:
        """Messages in ``thread`` continue ``session`` (Slack: the bot's answer thread under a mention)."""
        self.store.link_thread(thread, session)

    def _context(self, turn: Turn, status: Progress) -> ToolContext:
        return ToolContext(turn.session_key, turn.user_id, self.images, self.jobs, self.config.limits, status,
                           policy=policy_for(self.config.safety, turn), request=status.request)

    def _out(self, ids: list[str], session: str, loaded: set[str]) -> list[OutImage]:
        """The images to post, each with its buttons (core/actions.py)."""
        rows = [r for r in (self.store.image(session, i) for i in ids) if r]
        return [OutImage(r.image_id, self.images.path(r), f"{r.image_id}.png",
                         actions.offered(r, loaded, self.config.limits), session, r.tag) for r in rows]

    async def _finish(self, reply: Reply, outcome: Outcome, session: str) -> Outcome:
        try:
            loaded = await self.loaded_models() if outcome.images else set()
            await reply.send(outcome.text, self._out(outcome.images, session, loaded))
        except Exception:  # the platform refused the answer; the session already holds it
            log.exception("could not post the answer in %s", session)
        return outcome

    async def _guarded(self, turn: Turn, reply: Reply, work) -> Outcome:
        """The conversation's order, progress with a Cancel button, a stop that answers honestly, no exception
        reaching the adapter."""
        place = self._order.arrive(turn.session_key)  # before any await: the arrival order is the order
        progress = Progress(reply, delay=self.status_interval, interval=self.status_interval)
        request = progress.request = self.requests.open(turn)
        if (offer := getattr(reply, "offer_cancel", None)) is not None:
            offer(CancelButton(request.token, turn.session_key))
        self._turns += 1
        try:
            try:
                await reply.typing()
            except Exception as e:  # decoration only
                log.warning("typing indicator in %s failed: %s", turn.session_key, e)
            progress.start()
            if not await inflight.unless_cancelled(request, place.ready()):
                return await self._finish(reply, self._cancelled(request, stopped=True), turn.session_key)
            if self.stopping:
                return await self._finish(reply, Outcome(RESTARTING, error=True), turn.session_key)
            job = request.task = asyncio.create_task(self._run(turn, work, progress), name=f"turn {turn.session_key}")
            self._work.add(job)
            job.add_done_callback(self._work.discard)
            try:
                outcome = await job
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    raise  # the adapter itself is going away
                if request.cancelled_by is None:
                    log.info("turn in %s cut short by the stop", turn.session_key)
                    self.store.add_message(turn.session_key, "assistant", RESTARTING)
                outcome = Outcome(RESTARTING, error=True)
            if request.cancelled_by is not None:
                outcome = self._cancelled(request, stopped=job.cancelled(), made=outcome.images)
            return await self._finish(reply, outcome, turn.session_key)
        finally:  # after the answer, so the thread is never empty in between
            self.requests.close(request)
            place.leave()  # the conversation's next message need not wait for the status message to go
            try:
                await progress.clear()
            finally:
                self._turns -= 1

    def _cancelled(self, request: inflight.InFlight, stopped: bool, made: list[str] = ()) -> Outcome:
        """A cancelled request's answer (what it made before, if anything); stored when its work was stopped
        before saying so itself."""
        text = inflight.words(request) + (f" Made before that: {', '.join(made)}." if made else "")
        if stopped:
            self.store.add_message(request.session, "assistant", text, kind=NOTE)
        return Outcome(text, list(made), error=True)

    async def cancel(self, token: str, session: str, who: Turn) -> str | None:
        """A press of a Cancel button: None when the request is being cancelled (the conversation is told when
        it stopped), else what to tell the presser alone (over already, not theirs, pressed twice)."""
        request = self.requests.get(token)
        if request is not None and request.session != session:
            request = None
        if (refused := inflight.refusal(request, who)) is not None:
            return refused
        await inflight.cancel(request, who, self.pool)
        return None

    async def _run(self, turn: Turn, work, progress: Progress) -> Outcome:
        try:
            return await work(progress)
        except UserFacingError as e:
            return Outcome(str(e), error=True)
        except Exception as e:
            if no_room(e):  # the data directory's disk is full: say so (SQLite rolled the write back)
                log.error("turn in %s: no room in the data directory: %s", turn.session_key, e)
                return Outcome(DISK_FULL, error=True)
            log.exception("turn in %s failed", turn.session_key)
            return Outcome(GENERIC, error=True)

    async def stop(self, grace: float, answer_within: float = 20.0) -> None:
        """Stop taking turns. New ones are answered RESTARTING at once; turns in flight get ``grace``
        seconds, then are cut short and answered RESTARTING, their status messages removed."""
        self.stopping = True
        if self._work:
            log.info("stopping: %d turn(s) in flight get %g s to finish", len(self._work), grace)
            await asyncio.wait(set(self._work), timeout=grace)
        for job in list(self._work):
            job.cancel()
        deadline = time.monotonic() + answer_within
        while self._turns and time.monotonic() < deadline:  # answers and status removals on their way
            await asyncio.sleep(0.05)

    # --- a message ----------------------------------------------------------

    async def handle(self, turn: Turn, reply: Reply) -> Outcome:
        """A message for the bot: store uploads, then let the agent answer. Call it as the event
        arrives (files may still be to fetch): the message takes its place in its conversation at once.
        A message the access policy refuses gets its answer (or none: told already), and no place."""
        text = turn.text.strip()
        asks = bool(text) and not (_RESET.fullmatch(text) and not turn.attachments)  # an upload alone runs nothing
        if (refusal := self.access.admit(turn, request=asks)) is not None:
            return await self._refused(turn, reply, refusal)
        return await self._guarded(turn, reply, lambda progress: self._handle(turn, progress))

    async def _refused(self, turn: Turn, reply: Reply, text: str) -> Outcome:
        """Answer a refused request with ``text`` ("": not at all), outside the conversation's history."""
        if text:
            try:
                await reply.send(text)
            except Exception:
                log.exception("could not post a refusal in %s", turn.session_key)
        return Outcome(text, error=True)

    async def _handle(self, turn: Turn, progress: Progress) -> Outcome:
        ctx = self._context(turn, progress)
        text = turn.text.strip()
        if _RESET.fullmatch(text) and not turn.attachments:
            log.info("session %s reset by %s", turn.session_key, turn.user_id)
            self.store.reset(turn.session_key)
            return Outcome(CLEARED)
        uploaded, problems = await self._ingest(turn, ctx)
        if problems and not uploaded and text:  # the words were about the file: acting on them would guess
            log.info("session %s: not asking the LLM, no attachment of the message could be used", turn.session_key)
            return Outcome(" ".join([*problems, RESEND]), error=True)
        text, long = history.read_of(text, self.config.llm.history_tokens)  # sent whole up to the budget
        lines = [text] if text else []
        for row in uploaded:
            caption = f", shows: {row.caption}" if row.caption else ""
            lines.append(f"[uploaded {row.image_id} {quoted(row.params.get('filename') or '')}: "
                         f"{row.width}x{row.height}{caption}]")
        if not lines:
            return Outcome(" ".join(problems) or "Say what you would like me to do, or attach an image.",
                           error=bool(problems))
        self.store.add_message(turn.session_key, "user", "\n".join(lines), user=turn.user_name)
        if not text:  # an image with no words: acknowledge, no LLM round needed
            ids = ", ".join(f"{r.image_id}" + (f" ({r.caption})" if r.caption else "") for r in uploaded)
            text = " ".join([*problems, f"Got {ids}. What should I do with it?"])
            self.store.add_message(turn.session_key, "assistant", text)
            return Outcome(text)
        if self.llm is None:
            return Outcome(f"No language model is set up, so I can only run commands: {commands.names()}.",
                           error=True)
        llm = self.config.llm
        usable = await self.loaded_models() - self.access.denied_models(turn)  # tools of models allowed to them
        final = await run_turn(self.llm, ctx, usable, max_rounds=llm.max_tool_rounds,
                               token_budget=llm.history_tokens, turn_timeout=llm.turn_timeout_s)
        self.access.spent(turn, len(ctx.made))
        text = with_notice(ctx.withheld, " ".join([*problems, *long, final.text]))
        return Outcome(text, images_to_post(ctx), error=final.error)

    async def _ingest(self, turn: Turn, ctx: ToolContext) -> tuple[list, list[str]]:
        """Fetch, validate and store attachments (decoded off the event loop, a few at once);
        caption them when a captioning model is loaded (Florence-2's detailed caption, else BLIP's)."""
        fetched = await asyncio.gather(*(self._fetch(att) for att in turn.attachments))
        rows, problems = [], []
        for att, got in zip(turn.attachments, fetched):
            try:
                if isinstance(got, UserFacingError):
                    raise got
                async with self._decoding:
                    img, png = await asyncio.to_thread(self._decode, att.filename, got)
                rows.append(self.images.add_upload(turn.session_key, att.filename, img, png))
            except UserFacingError as e:
                log.info("refused upload %s in %s: %s", quoted(att.filename), turn.session_key, e)
                problems.append(str(e))
        if rows and BY_NAME["caption_image"].usable(await self.loaded_models()):  # Florence-2 or BLIP
            for row in rows:
                await call(BY_NAME["caption_image"], ctx, {"image": row.image_id})
            rows = [self.store.image(turn.session_key, r.image_id) for r in rows]
        return rows, problems

    @staticmethod
    async def _fetch(att) -> bytes | UserFacingError:
        try:
            return await att.read()
        except UserFacingError as e:
            return e

    def _decode(self, filename: str, data: bytes):
        img = self.images.decode_upload(filename, data)
        return img, encode(img)

    # --- direct commands ----------------------------------------------------

    async def direct(self, turn: Turn, reply: Reply, tool: str, args: dict[str, Any]) -> Outcome:
        """Run one tool without the LLM (slash commands). Attachments become image arguments (``with_uploads``).
        Like ``handle``, it takes its place in the conversation when called; refused first by the access policy."""
        models = {args["model"]} if args.get("model") else models_of(BY_NAME[tool])  # /imagine model: that one
        if (refusal := self.access.admit(turn, models=models, explicit=True)) is not None:
            return await self._refused(turn, reply, refusal)

        async def work(progress: Progress) -> Outcome:
            ctx = self._context(turn, progress)
            uploaded, problems = await self._ingest(turn, ctx)
            if problems:
                return Outcome(" ".join(problems), error=True)
            command = commands.BY_TOOL.get(tool)  # None: a tool no slash command runs (a template's step)
            given = commands.with_uploads(command, "image" in BY_NAME[tool].parameters, args,
                                          [r.image_id for r in uploaded])
            try:  # typed words (Slack, the terminal) as the tool takes them: --seed 42 a number, --ar a shape
                typed = commands.tool_args(command, given, self.config.limits) if command else given
            except ValueError as e:
                return Outcome(f"{e} Usage: {command.usage}", error=True)
            what = " ".join(f"{k}={v}" for k, v in typed.items())
            self.store.add_message(turn.session_key, "user", f"/{tool} {what}", user=turn.user_name)
            result = await call(BY_NAME[tool], ctx, typed)
            self.access.spent(turn, len(ctx.made))
            return self._answer(ctx, result, result.text.removeprefix("Error: "))

        return await self._guarded(turn, reply, work)

    # --- buttons under images -------------------------------------------------

    async def press(self, session: str, image_id: str, tag: str, action: str, turn: Turn | None = None) -> Press:
        """What pressing ``action`` under an image does; quick enough to answer before the platform's ack.
        ``turn``: the presser, whom the access policy may refuse (answered to them alone)."""
        row, press = await self._decide(session, image_id, tag, action)
        if turn is not None and row is not None and (press.kind != "private" or action == "info"):
            if (refusal := self.access.admit_press(turn, row, action, record=False)) is not None:
                return Press("private", refusal)
        return press

    async def _decide(self, session: str, image_id: str, tag: str, action: str) -> tuple[ImageRow | None, Press]:
        """The pressed image and what the press does: answered to the presser alone when the image is gone
        (reset away, never here, its file lost), or the button does not apply."""
        row = self._pressed(session, image_id, tag)
        if row is None:
            return None, Press("private", actions.missing(self.store, session, image_id, tag))
        press = actions.press(self.store, row, action, await self.loaded_models(), self.config.limits)
        if press.kind != "private" and (lost := actions.lost(self.store, self.images.path, row, action)):
            return row, Press("private", lost)
        return row, press

    async def act(self, turn: Turn, reply: Reply, image_id: str, tag: str, action: str,
                  instruction: str | None = None) -> Outcome:
        """Run a pressed button (Reroll, Variations, Upscale, a submitted Edit form) for the presser, in
        ``turn.session_key``: its jobs count against the presser's job cap; progress and the result (with its
        buttons) are posted like any request's, in the conversation's order."""

        row = self._pressed(turn.session_key, image_id, tag)
        if row is not None and (refusal := self.access.admit_press(turn, row, action)) is not None:
            return await self._refused(turn, reply, refusal)

        async def work(progress: Progress) -> Outcome:
            # checked again in the conversation's turn: reset away, its model unloaded or its file lost since
            row, again = await self._decide(turn.session_key, image_id, tag, action)
            if row is None or again.kind == "private":
                return Outcome(again.text, error=True)
            said = f"[pressed {actions.LABELS.get(action, action)} under {image_id}" + (
                f": {instruction}]" if instruction else "]")
            self.store.add_message(turn.session_key, "user", said, user=turn.user_name)
            ctx = self._context(turn, progress)
            result = await actions.run(ctx, row, action, instruction)
            self.access.spent(turn, len(ctx.made))
            # posted naming the presser with a mention, so they are notified; stored with their plain name
            shown = actions.answer(action, row, turn.mention, result, instruction) if turn.mention else None
            return self._answer(ctx, result, actions.answer(action, row, f"@{turn.user_name}", result, instruction),
                                shown)

        return await self._guarded(turn, reply, work)

    def _answer(self, ctx: ToolContext, result: ToolResult, text: str, shown: str | None = None) -> Outcome:
        """A command's or a button's answer: ``text``, or the withheld notice in its place; stored, with
        what was made (a failure as a note the LLM never reads as its own words). ``shown``: what the chat
        shows instead of ``text`` (a presser's mention, which the stored history keeps as a plain name)."""
        if ctx.withheld:
            text = shown = ctx.withheld[0]
        self.store.add_message(ctx.session, "assistant", text, kind=None if result.ok else NOTE)
        return Outcome(shown or text, ctx.made, error=not result.ok)

    def _pressed(self, session: str, image_id: str, tag: str):
        """The image a button was made for; None when it is gone (reset away: a new image has its id)."""
        row = self.store.image(session, image_id)
        return row if row is not None and row.tag == tag else None

    async def reset(self, session_key: str) -> str:
        self.store.reset(session_key)
        return CLEARED

    # --- commands answered with a text ----------------------------------------

    async def command(self, turn: Turn, name: str, args: dict[str, str] | None = None) -> str:
        """A command of core/commands.py that is answered with a text (/help, /reset, the admins'); a
        refusal is an answer like any other. Commands that run a tool go to ``direct``."""
        command = commands.BY_NAME.get(name)
        if command is None or command.tool:
            return f"/{name} is not a command I answer this way. {HELP}"
        if name == "help":
            return HELP
        if not (command.admin and turn.is_admin) and (refusal := self.access.admit(
                turn, request=False, explicit=True)) is not None:
            return refusal  # blocked, or not in the allowed roles
        if name == "quota":
            return self.access.quota(turn)
        if name == "reset":
            return await self.reset(turn.session_key)
        if name == "admin":
            if not turn.is_admin:
                log.warning("refused /admin from non-admin %s (%s)", turn.user_id, turn.platform)
                return "Sorry, /admin is for the bot's admins only."
            return self.access.admin(turn, **(args or {}))
        if name in ("queue", "cancel"):  # core/lineup.py
            return await getattr(lineup, name)(self.requests, self.pool, turn)
        return await self.admin(turn, name, **(args or {}))

    async def suggestions(self, command: str, arg: str, typed: str, within: float = 1.0) -> list[str]:
        """Values to suggest for an ``autocomplete`` argument as the user types (Discord drops answers after
        3 s): /imagine's model, the loaded drawing models; from the cache when the pool is slow to say."""
        if (command, arg) != ("imagine", "model"):
            return []
        try:
            loaded = await asyncio.wait_for(asyncio.shield(self.loaded_models()), within)
        except TimeoutError:
            loaded = self._loaded[1]
        return [m for m in DRAWING_MODELS if m in loaded and typed.lower() in m.lower()]

    async def admin(self, turn: Turn, action: str, model: str | None = None, device: str | None = None) -> str:
        """/models, /safety, /reload, /load, /unload (core/admin.py): refused, with an answer, for non-admins."""
        text, changed = await admin.answer(self.config, self.pool, turn, action, model, device, self.admin_notes)
        if changed:
            self._loaded = (0.0, set())  # what is loaded is asked again
        return text
