"""The baseline routers DualMap is measured against, each faithful to the system it stands for.

Load here is `InstanceView.local_inflight`, the router's own count of requests it sent and that
have not finished: what sglang-router and vllm-router count (`WorkerLoadGuard`), and exact for a
single router. Scraped engine counts are not used: up to a scrape interval stale, they kept an
instance that had just drained looking busy, and every load-aware baseline piled the next
half-second of traffic onto the instances that looked idle at the last scrape.

- round-robin: sglang-router's `round_robin` (a counter modulo the healthy workers); vLLM
  production-stack / most gateways' default; blind to load and cache.
- least-loaded: shortest queue (in-flight requests), first in pool order on a tie; blind to cache.
- power-of-two: two distinct random workers, the lower load wins, the first drawn on a tie
  (sglang-router / vllm-router `power_of_two`, `load1 <= load2`).
- consistent-hash: one ring keyed on the prefix, with bounded loads (Mirrokni et al.): an
  instance at ceil((1 + eps) * average) is skipped for the next on the ring.
- session: rendezvous hash on the session id (sticky sessions); no session -> least loaded.
The cache-aware radix baseline (sglang-router / vllm-router `cache_aware`) lives in cache_aware.py.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

import xxhash

from fleetgate.router.routing.base import InstanceView, RouteDecision, RouteRequest
from fleetgate.router.routing.common import NoHooks, affinity_key, decide
from fleetgate.router.routing.ring import RingCache


def least_inflight(instances: Sequence[InstanceView]) -> InstanceView:
    """The instance with the fewest requests in flight from this router, the first in pool order
    on a tie (Rust's `min_by_key`, which both peers use)."""
    return min(instances, key=_inflight)


def _inflight(view: InstanceView) -> int:
    return view.local_inflight


class RoundRobin(NoHooks):
    name = "round-robin"

    def __init__(self) -> None:
        self._next = 0

    def route(self, request: RouteRequest, instances: Sequence[InstanceView], now_s: float) -> RouteDecision:
        chosen = instances[self._next % len(instances)]
        self._next += 1
        return decide(chosen, instances, "rotation")


class LeastLoaded(NoHooks):
    name = "least-loaded"

    def route(self, request: RouteRequest, instances: Sequence[InstanceView], now_s: float) -> RouteDecision:
        return decide(least_inflight(instances), instances, "least-loaded")


class PowerOfTwo(NoHooks):
    name = "power-of-two"

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def route(self, request: RouteRequest, instances: Sequence[InstanceView], now_s: float) -> RouteDecision:
        if len(instances) == 1:
            return decide(instances[0], instances, "only")
        a, b = self._rng.sample(range(len(instances)), 2)
        first, second = instances[a], instances[b]
        chosen = first if first.local_inflight <= second.local_inflight else second
        return decide(chosen, instances, "two-choices")


class ConsistentHashBoundedLoad(NoHooks):
    name = "consistent-hash"

    def __init__(self, epsilon: float = 0.25, seed: int = 0x5EED) -> None:
        if epsilon <= 0:
            raise ValueError("epsilon must be > 0 (0 would forbid any imbalance)")
        self.epsilon = epsilon
        self._rings = RingCache((seed, seed + 1))

    def route(self, request: RouteRequest, instances: Sequence[InstanceView], now_s: float) -> RouteDecision:
        ring = self._rings.get([v.endpoint for v in instances]).first
        by_name = {v.name: v for v in instances}
        # Mirrokni et al.: capacity counts the request being placed.
        bound = math.ceil((1 + self.epsilon) * (sum(map(_inflight, instances)) + 1) / len(instances))
        for rank, name in enumerate(ring.walk(affinity_key(request))):
            view = by_name[name]
            if view.local_inflight + 1 <= bound:
                return decide(view, instances, "owner" if rank == 0 else "bounded-load")
        return decide(least_inflight(instances), instances, "bounded-load")


class SessionAffinity(NoHooks):
    name = "session"

    def route(self, request: RouteRequest, instances: Sequence[InstanceView], now_s: float) -> RouteDecision:
        session = request.session_id
        if not session:
            return decide(least_inflight(instances), instances, "no-session")
        data = session.encode()
        chosen = max(instances, key=lambda v: (xxhash.xxh3_64_intdigest(data + b"\x00" + v.name.encode()), v.name))
        return decide(chosen, instances, "session")
