"""What /queue and /cancel answer, from the requests in flight (core/inflight.py) and the pool's queue.

/queue: each of the asker's requests, its place in line on its device, the jobs ahead of it (whose,
running or waiting, how far) and about when it will be done; the ETAs are the pool's (gpu_pool/timings.py),
made from each model's recent jobs. /cancel: the asker's requests in this conversation, cancelled.
"""

from __future__ import annotations

from core import inflight
from core.pool_client import PoolUnavailable
from core.tools.base import duration_text
from core.turn import Turn
from gpu_pool.protocol import QueuedJob

NOTHING = "You have no request in flight, so you are not in the queue."
NOTHING_HERE = "You have no request running in this conversation, so there is nothing to cancel."


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _eta(seconds: float | None, words: str) -> str:
    return words.format(duration_text(seconds)) if seconds is not None else "no estimate yet"


def _line(book: inflight.Book, job: QueuedJob) -> str:
    """'Text2Image for Alice: running, step 3/10, about 2 s left'."""
    owner = book.owner(job.job_id)
    who = f"for {owner.user_name}" if owner is not None else "for another client of the image engine"
    if job.state == "running":
        how = f"running, step {job.step}/{job.total}" if job.total > 1 else "running"
        return f"{job.model} {who}: {how}, {_eta(job.done_in_s, 'about {} left')}"
    return f"{job.model} {who}: waiting, {_eta(job.done_in_s, 'done in about {}')}"


def _request(book: inflight.Book, request: inflight.InFlight, jobs: list[QueuedJob], turn: Turn) -> list[str]:
    where = "here" if request.session == turn.session_key else "in another conversation"
    mine = [j for j in jobs if j.job_id in request.jobs]
    if not mine:
        if request.held:
            return [f"Your request {where} waits for {request.held} earlier job(s) of yours to finish first."]
        return [f"Your request {where} is being worked on; none of its image jobs is in line right now."]
    lines = []
    for job in mine:
        if job.state == "running":
            lines.append(f"Your request {where} ({job.model}) is running: step {job.step}/{job.total}, "
                         f"{_eta(job.done_in_s, 'about {} left')}.")
            continue
        if job.state == "loading":
            lines.append(f"Your request {where} ({job.model}) waits for its model to load.")
            continue
        same = [j for j in jobs if j.device == job.device]
        ahead = [j for j in same[:same.index(job)] if j.state != "loading"]
        lines.append(f"Your request {where} ({job.model}) is {_ordinal(len(ahead) + 1)} in line, {len(ahead)} "
                     f"job(s) ahead of it, {_eta(job.done_in_s, 'done in about {}')}.")
        if ahead:
            lines.append("Ahead of it:")
            lines += [f"{i}. {_line(book, j)}" for i, j in enumerate(ahead, 1)]
    return lines


async def queue(book: inflight.Book, pool, turn: Turn) -> str:
    """/queue: the asker's requests, their places in line and ETAs, and the jobs ahead of them."""
    try:
        jobs = await pool.queue()
    except PoolUnavailable as e:
        return str(e)
    mine = book.of(turn.platform, turn.user_id)
    if not mine:
        busy = f" The image engine has {len(jobs)} job(s) running or waiting." if jobs else ""
        return NOTHING + busy
    return "\n".join(line for request in mine for line in _request(book, request, jobs, turn))


async def cancel(book: inflight.Book, pool, turn: Turn) -> str:
    """/cancel: every request of the asker's running in this conversation."""
    mine = [r for r in book.of(turn.platform, turn.user_id, turn.session_key) if r.cancelled_by is None]
    if not mine:
        return NOTHING_HERE
    for request in mine:
        await inflight.cancel(request, turn, pool)
    return f"Cancelling {len(mine)} request(s) of yours here; the conversation says when each has stopped."
