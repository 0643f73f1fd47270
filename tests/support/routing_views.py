"""Builders for router unit tests: pools of InstanceViews and RouteRequests from short texts."""

from __future__ import annotations

from dataclasses import replace

from fleetgate.core.prefix import prefix_hashes
from fleetgate.core.tokens import count_tokens
from fleetgate.pools.model import Endpoint
from fleetgate.pools.profiles import H100_80GB
from fleetgate.router.routing.base import InstanceView, RouteRequest


def pool(n: int, **loads: dict) -> list[InstanceView]:
    """`n` idle H100 instances i0..i{n-1}; `loads` maps a name to InstanceView field overrides."""
    views = []
    for i in range(n):
        name = f"i{i}"
        view = InstanceView(Endpoint(name, f"http://127.0.0.1:{8000 + i}", "p", "m"), H100_80GB)
        views.append(replace(view, **loads.get(name, {})))
    return views


def with_load(views: list[InstanceView], name: str, **fields) -> list[InstanceView]:
    return [replace(v, **fields) if v.name == name else v for v in views]


def request(text: str, request_id: str = "r", **fields) -> RouteRequest:
    return RouteRequest(request_id, prefix_hashes(text), count_tokens(text), **fields)


def names(decision) -> list[str]:
    return [e.name for e in decision.ordered]
