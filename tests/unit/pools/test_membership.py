"""FleetMembership without servers: names of instances added live, what the fleet file may change,
and a Kubernetes pool's members from its EndpointSlices."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from fleetgate.core.clock import ManualClock
from fleetgate.core.errors import InvalidRequestError
from fleetgate.pools.config import KubernetesSource, parse_fleet
from fleetgate.pools.k8s import EndpointSliceDiscovery
from fleetgate.pools.membership import FleetFileWatcher, FleetMembership, MemberNotFoundError
from fleetgate.pools.registry import FleetRegistry, HealthPolicy

FLEET = {"pools": [{"name": "chat", "model": "m", "instances": [{"url": "http://10.0.0.1:8000"},
                                                                 {"url": "http://10.0.0.2:8000"}]},
                   {"name": "k8s", "model": "m", "kubernetes": {"namespace": "llm", "selector": "app=vllm"}}]}


def membership(fleet: dict = FLEET) -> FleetMembership:
    config = parse_fleet(yaml.safe_dump(fleet))
    registry = FleetRegistry(config.to_pools(), policy=HealthPolicy(probe_interval_s=1, probe_timeout_s=1,
                                                                    eject_cooldown_s=1))
    return FleetMembership(config, registry, environ={})


def names(members: FleetMembership, pool: str) -> list[str]:
    return [e.name for e in members.pools[pool].endpoints]


def test_an_added_instance_takes_the_first_free_name_and_waits_for_its_first_probe() -> None:
    members = membership()
    seen: list[list[str]] = []
    members.on_change(lambda pools: seen.append([e.name for e in pools["chat"].endpoints]))
    members.remove_instance("chat", "http://10.0.0.1:8000/")
    added = members.add_instance("chat", "http://10.0.0.3:8000/v1")
    assert (added.name, added.url) == ("chat-0", "http://10.0.0.3:8000")  # chat-1 keeps its name: its ring points
    assert seen == [["chat-1"], ["chat-1", "chat-0"]]
    assert not members.registry.snapshot.state(added).healthy  # no request before a probe says it is up
    assert members.registry.snapshot.state(members.pools["chat"].endpoints[0]).healthy  # the kept one keeps its state


@pytest.mark.parametrize(("pool", "url", "error"), [
    ("nope", "http://10.0.0.9:1", MemberNotFoundError),
    ("chat", "10.0.0.9:1", InvalidRequestError),
    ("chat", "http://10.0.0.2:8000", InvalidRequestError),  # already in
    ("k8s", "http://10.0.0.9:1", InvalidRequestError),  # Kubernetes decides
])
def test_bad_additions_are_refused_with_the_reason(pool: str, url: str, error: type) -> None:
    members = membership()
    with pytest.raises(error):
        members.add_instance(pool, url)
    assert names(members, "chat") == ["chat-0", "chat-1"]


def test_a_pool_whose_key_variable_is_unset_is_refused_before_anything_changes() -> None:
    members = membership()
    with_key = {"pools": [*FLEET["pools"], {"name": "keyed", "model": "m", "api_key_env": "POOL_KEY",
                                             "instances": [{"url": "http://10.0.0.5:8000"}]}]}
    with pytest.raises(ValueError, match="POOL_KEY"):
        members.apply_config(parse_fleet(yaml.safe_dump(with_key)))
    assert set(members.pools) == {"chat", "k8s"}


def test_the_fleet_file_watcher_applies_a_changed_file_and_keeps_the_fleet_on_a_bad_one(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(FLEET))
    members, clock = membership(), ManualClock(0.0)
    watcher = FleetFileWatcher(members, path, interval_s=1.0, clock=clock)
    path.write_text(yaml.safe_dump({"pools": [{"name": "chat", "model": "m", "count": 3, "base_port": 9000}]}))
    clock.advance(1.0)
    assert watcher.poll() is True and set(members.pools) == {"chat"} and len(names(members, "chat")) == 3
    path.write_text("pools: []\n")
    clock.advance(1.0)
    assert watcher.poll() is False and len(names(members, "chat")) == 3
    clock.advance(1.0)
    assert watcher.poll() is None  # unchanged since the rejected version


def test_a_pool_gives_one_source_of_instances() -> None:
    with pytest.raises(ValueError, match="give one of"):
        parse_fleet(yaml.safe_dump({"pools": [{"name": "p", "model": "m", "count": 1, "base_port": 9000,
                                               "kubernetes": {"namespace": "llm", "selector": "a=b"}}]}))


def _slice(name: str, port: int, endpoints: list[tuple[str, str, bool | None]], port_name: str = "http") -> object:
    return SimpleNamespace(
        metadata=SimpleNamespace(name=name),
        ports=[SimpleNamespace(name="metrics", port=9090), SimpleNamespace(name=port_name, port=port)],
        endpoints=[SimpleNamespace(addresses=[address], conditions=SimpleNamespace(ready=ready),
                                   target_ref=SimpleNamespace(name=pod)) for pod, address, ready in endpoints])


def test_endpoint_slices_give_the_ready_endpoints_named_after_their_pods() -> None:
    reported: list = []
    discovery = EndpointSliceDiscovery("k8s", KubernetesSource(namespace="llm", selector="app=vllm", port="http"),
                                       reported.append)
    discovery._apply("ADDED", _slice("s1", 8000, [("vllm-0", "10.1.0.4", True), ("vllm-1", "10.1.0.5", False),
                                                  ("vllm-2", "fd00::7", None)]))
    assert reported[-1] == [("k8s-vllm-0", "http://10.1.0.4:8000"), ("k8s-vllm-2", "http://[fd00::7]:8000")]
    discovery._apply("DELETED", _slice("s1", 8000, []))
    assert reported[-1] == []
