"""A turn's progress message: best-effort, coalesced, within the platform's edit budget.

Tools report often (queue position, step n/N) and must never wait for, or fail
because of, the chat platform. So ``Progress`` only records the latest text and
a background task shows it:

1. nothing before ``delay`` seconds (a fast turn never flashes a status message);
2. then the latest text, edited at most once per ``interval``, older texts skipped;
3. an edit only when the workspace's ``EditBudget`` (shared by every turn there) has room, in turn
   with the other statuses waiting there;
4. a failed call is logged and forgotten; ``RateLimited`` pauses the whole budget for
   its Retry-After; the work goes on either way.

``clear()`` ends it: it waits for a post already on its way (so no message is left
behind), then deletes the message if one is shown.
"""

from __future__ import annotations

import asyncio
import logging

from core.errors import RateLimited
from core.turn import Reply

log = logging.getLogger(__name__)
CALL_TIMEOUT_S = 15.0  # one platform call; a hung one must not hold up the end of a turn
MAX_RETRY_AFTER_S = 10.0  # longest wait for the final delete when the platform says to wait


class Progress:
    def __init__(self, reply: Reply, *, delay: float = 1.0, interval: float = 1.0):
        self.reply, self.delay, self.interval = reply, delay, interval
        self.request = None  # the request in flight it shows progress for (core/inflight.py): its Cancel button
        self.budget = getattr(reply, "edit_budget", None)
        self._text: str | None = getattr(reply, "waiting_text", None)  # what should be shown
        self._shown: str | None = None  # what is shown (None: no message)
        self._idle = asyncio.Event()  # no platform call on its way
        self._idle.set()
        self._closed = False
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Begin counting the delay (at the start of a turn)."""
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name="progress")

    async def __call__(self, text: str | None) -> None:
        """Show ``text`` soon (None: remove the message). Never waits on the platform, never raises."""
        self._text = text
        self._changed.set()
        self.start()

    async def _run(self) -> None:
        await asyncio.sleep(self.delay)
        while not self._closed:
            if self._text == self._shown:
                if self.budget is not None:
                    self.budget.leave(self)  # nothing to edit: no place in line
                self._changed.clear()
                await self._changed.wait()
                continue
            if self._shown is not None and self._text is not None and self.budget is not None:
                wait = self.budget.take(self)
                if wait > 0:  # the workspace's edits are spent: skip ahead to the latest text later
                    await asyncio.sleep(wait)
                    continue
            text = self._text
            pause = await self._call(text)
            if pause is None:
                self._shown = text
            await asyncio.sleep(max(self.interval, pause or 0.0))

    async def _call(self, text: str | None) -> float | None:
        """One platform call: None when it worked, else the seconds to wait before the next."""
        self._idle.clear()
        try:
            await asyncio.wait_for(self.reply.status(text), CALL_TIMEOUT_S)
            return None
        except RateLimited as e:
            if self.budget is not None:
                self.budget.pause(e.retry_after)
            log.info("status update rate-limited; waiting %.1f s", e.retry_after)
            return min(e.retry_after, MAX_RETRY_AFTER_S)
        except Exception as e:  # decoration only (TimeoutError too): the work goes on
            log.warning("status update failed (%s): %s", type(e).__name__, e)
            return 0.0
        finally:
            self._idle.set()

    async def clear(self) -> None:
        """Stop updating; remove the message if one is shown (best-effort, never raises)."""
        self._closed = True
        if self.budget is not None:
            self.budget.leave(self)
        task, self._task = self._task, None
        if task is not None:
            if self._shown is None:  # a post may be on its way: let it land, so it can be deleted
                try:
                    await asyncio.wait_for(self._idle.wait(), CALL_TIMEOUT_S)
                except TimeoutError:
                    pass
            task.cancel()  # an edit on its way is moot
            await asyncio.gather(task, return_exceptions=True)
        if self._shown is None:
            return
        for _ in range(2):
            try:
                await asyncio.wait_for(self.reply.status(None), CALL_TIMEOUT_S)
                self._shown = None
                return
            except RateLimited as e:  # deleting is worth one wait: a stale "Working on it…" misleads
                await asyncio.sleep(min(e.retry_after, MAX_RETRY_AFTER_S))
            except Exception as e:
                log.warning("removing the status message failed (%s): %s", type(e).__name__, e)
                return
