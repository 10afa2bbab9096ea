"""Which replica runs a job: the rule, apart from Ray so that it reads (and tests) on its own.

A job goes to the least busy replica that holds its model. A model gets one
more replica (a copy) when it is hot: every replica holding it has
``spread_after`` jobs or more in flight, and another replica has fewer; the
job goes to the least busy of those, which loads the model. A model nobody
holds goes to the least busy replica, the one with the fewest models among
equals (so the configured models spread over the replicas at startup).

A few models are no one's to place: every replica holds them (``EVERY_REPLICA``),
because the replica's own jobs need them. The safety checker looks at each
image a drawing model makes before it leaves the replica that drew it, so
each replica loads one (one per device, as the local pool holds one per device).

Ray Serve's own multiplexing never copies a hot model while its replica
accepts more requests (ray-project/ray#48741); and it counts models, not
bytes, which is why the replicas' residency budget, not Ray, decides what
stays on each GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable, Iterable

from settings import SAFETY_CHECKER

EVERY_REPLICA = (SAFETY_CHECKER,)  # loaded on each replica, with its first job or placement there


def reloads_here(held: Iterable[str]) -> Callable[[str], bool]:
    """Which models a replica's reload reloads (``Registry.reload``'s ``where``): those it holds, and those
    every replica holds (loaded where they are missing)."""
    held = frozenset(held)
    return lambda name: name in held or name in EVERY_REPLICA


@dataclass(frozen=True)
class Load:
    replica: str
    models: frozenset[str]  # held, or being loaded
    jobs: int  # in flight from this router: queued or running


def pick(model: str, replicas: list[Load], spread_after: int) -> str:
    """The replica for a job of ``model`` (``replicas`` must not be empty)."""
    def least_busy(rs: list[Load]) -> Load:
        return min(rs, key=lambda r: (r.jobs, len(r.models), r.replica))

    holders = [r for r in replicas if model in r.models]
    others = [r for r in replicas if model not in r.models]
    if not holders:
        return least_busy(replicas).replica
    best = least_busy(holders)
    if spread_after and best.jobs >= spread_after and others:
        spare = least_busy(others)
        if spare.jobs < best.jobs:
            return spare.replica
    return best.replica
