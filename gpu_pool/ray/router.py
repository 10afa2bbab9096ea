"""The Serve request router of the pool's replicas: ``placement.pick`` on Serve's replica set.

It runs inside every handle to the replicas (in the pool process, which
holds the only one), so it sees every job: it counts the jobs in flight per
replica itself instead of asking the replicas. A replica holds a model when
it reported it as a Serve multiplexed model id (``serve.multiplexed`` in
``replica.py``), or when this router sent it a job for that model (reports
arrive a moment later).

A multiplexed id ``PIN + replica id`` addresses one replica, for the admin
calls that must reach each of them; if that replica is gone the call goes to
any other, which sees the id is not its own and answers None.
"""

from __future__ import annotations

import math
import time
import weakref
from collections import Counter, defaultdict

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from gpu_pool.ray.placement import Load, pick

PIN = "replica:"
CHOSEN_TTL_S = 30  # a choice never confirmed (the request was cancelled while routing) stops counting then
_LIVE: weakref.WeakValueDictionary[str, HotModelRouter] = weakref.WeakValueDictionary()


def replica_ids(deployment: str) -> list[str]:
    """The replicas the router of this process routes to now ([] before its first update)."""
    router = _LIVE.get(deployment)
    return sorted(r.unique_id for r in list(router.curr_replicas)) if router else []


class HotModelRouter(RequestRouter):
    def initialize_state(self, spread_after: int = 2, **_) -> None:
        self.spread_after = spread_after
        # internal request id -> (replica, counted until): a choice counts for CHOSEN_TTL_S, a routed request until done
        self.routed: dict[str, tuple[ReplicaID, float]] = {}
        self.sent: defaultdict[ReplicaID, set[str]] = defaultdict(set)  # models sent to each replica
        # Registered through the module as imported here: Serve may hand this class over pickled by value.
        from gpu_pool.ray import router as home

        home._LIVE[self._deployment_id.name] = self

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        model = pending_request.metadata.multiplexed_model_id if pending_request else ""
        if model.startswith(PIN):
            pinned = [r for r in candidate_replicas if r.replica_id.unique_id == model[len(PIN):]]
            return [pinned or candidate_replicas]
        if not model or not candidate_replicas:
            return [candidate_replicas]
        now = time.monotonic()
        self.routed = {k: v for k, v in self.routed.items() if v[1] > now}
        jobs = Counter(rid for rid, _ in self.routed.values())
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        loads = [Load(r.replica_id.unique_id, frozenset(r.multiplexed_model_ids) | self.sent[r.replica_id],
                      jobs[r.replica_id]) for r in candidate_replicas]
        chosen = by_id[pick(model, loads, self.spread_after)]
        # Counted from the choice on, so requests routed at the same moment see each other.
        self.routed[pending_request.metadata.internal_request_id] = (chosen.replica_id, now + CHOSEN_TTL_S)
        self.sent[chosen.replica_id].add(model)
        return [[chosen]]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result) -> None:
        if not pending_request.metadata.multiplexed_model_id.startswith(PIN):  # admin calls are no jobs
            self.routed[pending_request.metadata.internal_request_id] = (replica_id, math.inf)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self.routed.pop(internal_request_id, None)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.sent.pop(replica_id, None)
        self.routed = {k: v for k, v in self.routed.items() if v[0] != replica_id}
