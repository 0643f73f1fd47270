"""Small pieces every router shares: the affinity key, load ordering and no-op lifecycle hooks."""

from __future__ import annotations

import heapq
from typing import Sequence

from fleetgate.pools.model import Endpoint
from fleetgate.router.routing.base import InstanceView, RouteDecision, RouteRequest
from fleetgate.router.routing.ring import Key


def affinity_key(request: RouteRequest, use_session: bool = False) -> Key:
    """The routing key: the session id when asked for and present, else the prefix chain hash at
    block min(n_blocks, key_blocks); an empty prompt keys on its request id so it spreads."""
    if use_session and request.session_id:
        return request.session_id
    hashes = request.prefix_hashes
    if not hashes:
        return request.request_id
    return hashes[min(len(hashes), max(1, request.key_blocks)) - 1]


def load_order(view: InstanceView) -> tuple[int, str]:
    """Sort key: least loaded first, ties by name so every replica breaks them the same way."""
    return view.load, view.name


RANKED_FALLBACKS = 3
"""Fallbacks ranked after the chosen instance. The gateway tries at most a few instances before
the first byte, so the tail is left in pool order: a decision stays O(n), not O(n log n)."""


def ranked(chosen: Sequence[InstanceView], rest: Sequence[tuple[float, str, InstanceView]]) -> tuple[Endpoint, ...]:
    """`chosen` in order, then the RANKED_FALLBACKS best of `rest` ((score, name, view), lower is
    better), then the remaining views of `rest` in their given order."""
    best = heapq.nsmallest(RANKED_FALLBACKS, rest, key=lambda item: (item[0], item[1]))
    picked = {id(item[2]) for item in best}
    tail = (item[2] for item in rest if id(item[2]) not in picked)
    return tuple(v.endpoint for v in (*chosen, *(item[2] for item in best), *tail))


def decide(chosen: InstanceView, instances: Sequence[InstanceView], reason: str) -> RouteDecision:
    """`chosen` first, then fallbacks from least loaded (see RANKED_FALLBACKS)."""
    rest = [(v.load, v.name, v) for v in instances if v is not chosen]
    return RouteDecision(ranked((chosen,), rest), reason)


class NoHooks:
    """Lifecycle hooks for routers that keep no per-request state."""

    def on_dispatch(self, request: RouteRequest, endpoint: Endpoint, now_s: float) -> None:
        return None

    def on_first_token(self, request: RouteRequest, endpoint: Endpoint, now_s: float) -> None:
        return None

    def on_finish(self, request: RouteRequest, endpoint: Endpoint, now_s: float, ok: bool) -> None:
        return None
