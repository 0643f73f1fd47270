"""Routers by name: the names operators write in policies and on the command line."""

from __future__ import annotations

from typing import Any, Callable

from fleetgate.router.routing.base import Router
from fleetgate.router.routing.baselines import (
    ConsistentHashBoundedLoad,
    LeastLoaded,
    PowerOfTwo,
    RoundRobin,
    SessionAffinity,
)
from fleetgate.router.routing.cache_aware import CacheAware
from fleetgate.router.routing.dualmap import DualMap

_FACTORIES: dict[str, Callable[..., Router]] = {
    "round-robin": RoundRobin,
    "least-loaded": LeastLoaded,
    "power-of-two": PowerOfTwo,
    "consistent-hash": ConsistentHashBoundedLoad,
    "cache-aware": CacheAware,
    "session": SessionAffinity,
    "dualmap": DualMap,
}

ROUTER_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def make_router(name: str, **params: Any) -> Router:
    """A new router called `name`, built with `params` (its constructor's keyword arguments).
    Each call builds an independent object: replicas and simulations never share router state."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown router {name!r}; known: {', '.join(ROUTER_NAMES)}") from None
    try:
        return factory(**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for router {name!r}: {exc}") from None
