"""The progress line, on a scripted platform: paced, coalesced, best-effort (no pool needed)."""

from __future__ import annotations

import asyncio
import time

from core.errors import RateLimited
from core.progress import Progress
from core.turn import EditBudget


class Platform:
    """A Reply whose status calls are recorded; ``refuse`` makes the next calls fail."""

    def __init__(self, budget: EditBudget | None = None, waiting_text: str | None = None):
        self.edit_budget, self.waiting_text = budget, waiting_text
        self.calls: list[tuple[str, str | None, float]] = []
        self.refuse: list[Exception] = []
        self.shown = False

    async def status(self, text):
        if self.refuse:
            raise self.refuse.pop(0)
        kind = "delete" if text is None else "edit" if self.shown else "post"
        self.shown = text is not None
        self.calls.append((kind, text, time.monotonic()))

    async def send(self, text, images=()):
        pass

    async def typing(self):
        pass


async def test_the_latest_text_at_most_once_per_interval_then_removed():
    platform = Platform()
    progress = Progress(platform, delay=0.0, interval=0.3)
    for step in range(1, 6):
        await progress(f"step {step}/5")
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.4)
    await progress.clear()
    kinds = [(k, t) for k, t, _ in platform.calls]
    assert kinds[0] == ("post", "step 1/5") and kinds[-2:] == [("edit", "step 5/5"), ("delete", None)]
    assert len(kinds) <= 4  # older texts skipped
    times = [at for _, _, at in platform.calls]
    assert all(b - a >= 0.29 for a, b in zip(times[:-2], times[1:-1]))


async def test_a_fast_turn_shows_nothing():
    platform = Platform(waiting_text="Working on it…")
    progress = Progress(platform, delay=1.0, interval=1.0)
    progress.start()
    await progress("Drawing: step 1/2")
    await asyncio.sleep(0.2)
    await progress.clear()
    assert platform.calls == []


async def test_failures_are_logged_not_raised_and_retry_after_pauses_the_whole_budget(caplog):
    budget = EditBudget(per_minute=6000, burst=10)
    platform = Platform(budget)
    progress = Progress(platform, delay=0.0, interval=0.0)
    await progress("one")
    await asyncio.sleep(0.05)
    platform.refuse = [RuntimeError("message deleted"), RateLimited(0.5)]
    await progress("two")  # fails
    await asyncio.sleep(0.05)
    await progress("three")  # rate-limited: nobody in this workspace edits for 0.5 s
    await asyncio.sleep(0.05)
    assert budget.take() > 0.3
    await progress("four")
    await asyncio.sleep(0.8)
    await progress.clear()
    assert [(k, t) for k, t, _ in platform.calls] == [("post", "one"), ("edit", "four"), ("delete", None)]
    assert any("status update failed" in r.getMessage() for r in caplog.records)


def test_the_edit_budget_is_a_shared_token_bucket():
    budget = EditBudget(per_minute=60, burst=3)
    assert [budget.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert 0.9 < budget.take() <= 1.0  # then one a second
    assert budget.spent == 3



async def test_a_status_that_waits_for_the_budget_gets_its_turn_before_busy_ones_edit_again():
    # Three running jobs' statuses want an edit every step; a queued request's wants one ("now 2 ahead").
    # The workspace allows 2 edits a second, each status at most 5: the queued one must be shown in its
    # turn (before the busy ones take two rounds of tokens), not starved by those who ask more often.
    budget = EditBudget(per_minute=120, burst=1)
    platforms = [Platform(budget) for _ in range(4)]
    *busy, waiting = [Progress(p, delay=0.0, interval=0.2) for p in platforms]
    for i, b in enumerate(busy):
        await b(f"job {i} step 0")
    await waiting("3 job(s) ahead")
    await asyncio.sleep(0.1)  # all posted (a post needs no edit)

    async def steps():
        for step in range(1, 10**6):
            for i, b in enumerate(busy):
                await b(f"job {i} step {step}")
            await asyncio.sleep(0.01)

    stepping = asyncio.create_task(steps())
    try:
        await asyncio.sleep(1.0)  # the busy ones have the line to themselves
        asked = time.monotonic()
        await waiting("2 job(s) ahead")
        for _ in range(500):
            if any(t == "2 job(s) ahead" for _, t, _ in platforms[-1].calls):
                break
            await asyncio.sleep(0.01)
        shown = [at for _, t, at in platforms[-1].calls if t == "2 job(s) ahead"]
        assert shown and shown[0] - asked < 2.2  # its turn: behind at most the 3 busy ones (2 a second)
        edits = sorted(at for p in platforms for k, _, at in p.calls if k == "edit")
        assert len(edits) <= 1 + 2 * (edits[-1] - edits[0]) + 1  # and the budget held for all together
    finally:
        stepping.cancel()
        for p in (*busy, waiting):
            await p.clear()
