"""Adapter holders first: within the router's own choices when one holds it, else the pool's least loaded holder."""

from __future__ import annotations

from types import MappingProxyType

from fleetgate.pools.model import Endpoint, EndpointState, Pool
from fleetgate.pools.registry import FleetRegistry, HealthPolicy
from fleetgate.router.lora import LoraLoader, base_model
from fleetgate.router.routing.base import InstanceView, RouteDecision

ENDPOINTS = tuple(Endpoint(name=f"p-{i}", url=f"http://127.0.0.1:{9000 + i}", pool="p", model="base") for i in range(4))


def loader(held: dict[str, frozenset[str]]) -> tuple[LoraLoader, list[InstanceView]]:
    pool = Pool("p", "base", ENDPOINTS, lora_adapters=MappingProxyType({"ad": "/ad"}))
    registry = FleetRegistry({"p": pool}, policy=HealthPolicy(0.5, 0.5, 1.0))
    registry._publish(registry.snapshot.pools, {e.name: EndpointState(adapters=held.get(e.name, frozenset()))
                                                for e in ENDPOINTS})
    views = [InstanceView(endpoint=e, profile=e.profile, running=i) for i, e in enumerate(ENDPOINTS)]
    return LoraLoader(registry, lambda: None, lambda _pool: {}), views  # type: ignore[arg-type, return-value]


def test_a_candidate_that_holds_the_adapter_goes_first() -> None:
    lora, views = loader({"p-1": frozenset({"ad"})})
    decision = lora.prefer_holders("ad", RouteDecision((ENDPOINTS[0], ENDPOINTS[1]), "affinity-c1"), views)
    assert decision.head[:2] == (ENDPOINTS[1], ENDPOINTS[0]) and decision.reason == "affinity-c1+lora"


def test_else_the_least_loaded_holder_of_the_pool() -> None:
    lora, views = loader({"p-3": frozenset({"ad"}), "p-2": frozenset({"ad"})})
    decision = lora.prefer_holders("ad", RouteDecision((ENDPOINTS[0], ENDPOINTS[1]), "affinity-c1"), views)
    assert decision.chosen == ENDPOINTS[2] and decision.reason == "lora-holder"
    assert decision.ordered == (ENDPOINTS[2], ENDPOINTS[0], ENDPOINTS[1])  # then the router's own order


def test_nobody_holds_it_the_decision_stands() -> None:
    lora, views = loader({})
    decision = RouteDecision((ENDPOINTS[0],), "affinity-c1")
    assert lora.prefer_holders("ad", decision, views) is decision


def test_adapters_resolve_to_their_base_model() -> None:
    lora, _ = loader({"p-0": frozenset({"listed-only"})})
    snapshot = lora._registry.snapshot
    assert base_model(snapshot, "ad") == "base"  # named in the fleet file
    assert base_model(snapshot, "listed-only") == "base"  # an instance lists it
    assert base_model(snapshot, "base") is None and base_model(snapshot, "unknown") is None
