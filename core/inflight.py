"""Requests in flight: who asked, where, and which pool jobs run for them now.

Every request (a message, a slash command, a button press) is booked here from its arrival
until its answer is posted (``Core._guarded``); its tool calls note their pool jobs as the
pool's events name them (``core/tools/base.py``, ``run_job``). ``/queue`` reads the book
to say whose jobs are ahead of yours, and Cancel (the button on the progress message, or
``/cancel``) finds the request here by its token.

Cancelling (``cancel``): each of the request's jobs in the pool is cancelled (it stops at
its next diffusion step, its failed event saying which step); a request with no job in the
pool (the LLM thinking, a job waiting behind the user's earlier ones, the request behind
the conversation's earlier messages) is stopped at once; one whose job does not end within
``GRACE_S`` is stopped too (the 2 s the user waits for "cancelled" hold on a busy machine),
told the last step its job was seen at. Only the requester or an admin may cancel; a second press is
told the request is already being cancelled, or over.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field

from core.turn import Turn
from gpu_pool.protocol import Event

log = logging.getLogger(__name__)
GRACE_S = 1.5  # a cancelled job that has not ended by then (a step that takes long) is left behind
OVER = "That request is over: it was answered or cancelled already, so there is nothing to cancel."
NOT_YOURS = "Only {owner} (who asked) or one of the bot's admins can cancel that request."
ALREADY = "That request is being cancelled already."


@dataclass
class InFlight:
    """One request from its arrival to its answer."""

    token: str  # names it on its Cancel button (8 hex digits)
    platform: str
    session: str
    user_id: str
    user_name: str
    jobs: dict[str, str] = field(default_factory=dict)  # pool job id -> model, while in the pool
    last: dict[str, Event] = field(default_factory=dict)  # pool job id -> its latest event
    held: int = 0  # a job of it waits in the core behind this many earlier jobs of the user's (per_user_jobs)
    cancelled_by: str | None = None  # who cancelled it (as shown: a mention or a name)
    by_owner: bool = False  # the requester cancelled it
    stopped_at: tuple[int, int] | None = None  # (step, total) the pool stopped its job at
    task: asyncio.Task | None = None  # its work, once it runs
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def seen(self, model: str, ev: Event) -> None:
        """A pool event of one of its jobs (job_id "": a job still waiting in the core)."""
        if not ev.job_id:
            self.held = ev.position or 0 if ev.kind == "queued" else self.held
            return
        self.held = 0
        if ev.kind in ("done", "failed"):
            self.jobs.pop(ev.job_id, None)
            self.last.pop(ev.job_id, None)
            if ev.code == "cancelled" and ev.total:
                self.stopped_at = (ev.step or 0, ev.total)
        else:
            self.jobs[ev.job_id] = model
            self.last[ev.job_id] = ev


class Book:
    """The requests in flight, by token."""

    def __init__(self) -> None:
        self._open: dict[str, InFlight] = {}

    def open(self, turn: Turn) -> InFlight:
        while (token := secrets.token_hex(4)) in self._open:
            pass
        request = self._open[token] = InFlight(token, turn.platform, turn.session_key, turn.user_id,
                                               turn.user_name)
        return request

    def close(self, request: InFlight) -> None:
        self._open.pop(request.token, None)

    def get(self, token: str) -> InFlight | None:
        return self._open.get(token)

    def of(self, platform: str, user_id: str, session: str | None = None) -> list[InFlight]:
        """A user's requests in flight, oldest first (in one conversation when ``session`` is given)."""
        return [r for r in self._open.values() if r.platform == platform and r.user_id == user_id
                and (session is None or r.session == session)]

    def owner(self, job_id: str) -> InFlight | None:
        """The request a pool job runs for; None for one this bot did not send (another client's)."""
        return next((r for r in self._open.values() if job_id in r.jobs), None)


def refusal(request: InFlight | None, who: Turn) -> str | None:
    """Why ``who`` may not cancel ``request`` (gone, someone else's, already cancelled); None: they may."""
    if request is None:
        return OVER
    if request.user_id != who.user_id and not who.is_admin:
        return NOT_YOURS.format(owner=request.user_name)
    if request.cancelled_by is not None:
        return ALREADY
    return None


async def unless_cancelled(request: InFlight, waiting) -> bool:
    """Await ``waiting`` (the conversation's earlier messages) unless ``request`` is cancelled first;
    True when it came, False when cancelled."""
    came, stop = asyncio.ensure_future(waiting), asyncio.ensure_future(request.stop.wait())
    try:
        await asyncio.wait({came, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for f in (came, stop):
            f.cancel()
    return not request.stop.is_set()


async def cancel(request: InFlight, who: Turn, pool) -> None:
    """Stop ``request``: its pool jobs at their next step (the pool says so in their failed events, and the
    request ends with that), the rest of its work at once. ``who`` cancelled it."""
    request.cancelled_by = who.mention or f"@{who.user_name}"
    request.by_owner = who.user_id == request.user_id
    request.stop.set()
    jobs = list(request.jobs)
    log.info("request %s of %s in %s cancelled by %s; pool jobs %s", request.token, request.user_id,
             request.session, who.user_id, ", ".join(jobs) or "none")
    for job_id in jobs:
        try:
            await pool.cancel(job_id)
        except Exception as e:  # the pool is gone: stopping the work below ends the job too
            log.warning("cancelling pool job %s failed: %r", job_id, e)
    if not jobs:
        _stop(request)
    else:  # the pool ends them at their next step; a step that takes longer is not waited for
        asyncio.get_running_loop().call_later(GRACE_S, _stop, request)


def _stop(request: InFlight) -> None:
    if request.task is not None and not request.task.done():
        if request.stopped_at is None:  # the pool has not said yet: its job's last step seen is where it stops
            seen = [(e.step or 0, e.total) for e in request.last.values() if e.kind == "progress" and e.total]
            request.stopped_at = seen[-1] if seen else None
        request.task.cancel()


def words(request: InFlight) -> str:
    """What the conversation is told: 'Cancelled at step 3 of 50.', or by whom when someone else did it."""
    by = "" if request.by_owner else f" by {request.cancelled_by}"
    at = f" at step {request.stopped_at[0]} of {request.stopped_at[1]}" if request.stopped_at else ""
    return f"Cancelled{by}{at}."
