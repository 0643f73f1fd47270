"""Small pieces every router shares: the affinity key, load ordering and no-op lifecycle hooks."""

from __future__ import annotations

from typing import Callable, Collection, Sequence

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


def rank_rest(
    instances: Sequence[InstanceView], exclude: Collection[Endpoint], score: Callable[[InstanceView], float]
) -> tuple[Endpoint, ...]:
    """Every instance not in `exclude`, best (lowest `score`, then name) first. Routers hand this
    to `RouteDecision.tail`, so it runs only when the gateway needs a fallback: a decision itself
    stays O(1) in the pool size where the router allows it."""
    rest = [v for v in instances if v.endpoint not in exclude]
    rest.sort(key=lambda v: (score(v), v.name))
    return tuple(v.endpoint for v in rest)


def decide(chosen: InstanceView, instances: Sequence[InstanceView], reason: str) -> RouteDecision:
    """`chosen` first, then the fallbacks from least loaded, ranked only when asked for."""
    return RouteDecision((chosen.endpoint,), reason, tail=lambda: rank_rest(instances, (chosen.endpoint,), _load))


def _load(view: InstanceView) -> float:
    return view.load


class NoHooks:
    """Lifecycle hooks for routers that keep no per-request state."""

    def on_dispatch(self, request: RouteRequest, endpoint: Endpoint, now_s: float) -> None:
        return None

    def on_first_token(self, request: RouteRequest, endpoint: Endpoint, now_s: float) -> None:
        return None

    def on_finish(self, request: RouteRequest, endpoint: Endpoint, now_s: float, ok: bool) -> None:
        return None
