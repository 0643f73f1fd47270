"""The fleet file: valid pools become Endpoints; every mistake names its YAML path."""

import pytest

from fleetgate.core.yamlconf import ConfigError
from fleetgate.pools.config import parse_fleet, single_pool_fleet

VALID = """
pools:
  - name: small
    model: m
    gpu: L4
    count: 2
    base_port: 9100
  - name: big
    model: m
    instances:
      - url: http://10.0.0.1:8000/v1
        weight: 2
        name: big-a
"""


def test_valid_fleet_becomes_pools():
    pools = parse_fleet(VALID).to_pools()
    assert [e.url for e in pools["small"].endpoints] == ["http://127.0.0.1:9100", "http://127.0.0.1:9101"]
    assert pools["small"].endpoints[0].gpu == "l4" and pools["small"].max_context_tokens == 8192
    big = pools["big"].endpoints[0]
    assert (big.name, big.url, big.weight, big.max_context_tokens) == ("big-a", "http://10.0.0.1:8000", 2.0, 32768)


@pytest.mark.parametrize(
    ("yaml_text", "path", "fragment"),
    [
        ("pools: []", "pools", "at least 1"),
        ("pools:\n  - name: a\n    model: m\n    gpu: tpu\n    count: 1\n    base_port: 1", "pools[0].gpu", "unknown GPU"),
        ("pools:\n  - name: a\n    model: m\n    instances:\n      - url: ftp://x", "pools[0].instances[0].url", "http://"),
        ("pools:\n  - name: a\n    model: m", "pools[0]", "give one of"),
        ("pools:\n  - name: a\n    model: m\n    count: 2", "pools[0]", "base_port"),
        ("pools:\n  - name: a\n    model: m\n    count: 1\n    base_port: 1\n    colour: red", "pools[0].colour", "Extra inputs"),
        ("pools:\n  - {name: a, model: m, count: 1, base_port: 5}\n  - {name: a, model: m, count: 1, base_port: 6}", "", "repeated: a"),
        ("pools:\n  - {name: a, model: m, count: 2, base_port: 5}\n  - {name: b, model: m, count: 1, base_port: 6}", "", "repeated: http://127.0.0.1:6"),
        ("pools: [", "", "not valid YAML at line"),
        ("- just a list", "", "mapping"),
    ],
)
def test_invalid_fleet_names_the_yaml_path(yaml_text, path, fragment):
    with pytest.raises(ConfigError) as caught:
        parse_fleet(yaml_text)
    assert any(p == path and fragment in m for p, m in caught.value.problems), caught.value.problems


def test_quick_start_fleet_is_one_pool():
    pools = single_pool_fleet(["http://127.0.0.1:1", "http://127.0.0.1:2"], model="m").to_pools()
    assert list(pools) == ["default"] and len(pools["default"].endpoints) == 2


def test_an_instance_may_override_its_pools_gpu() -> None:
    fleet = parse_fleet(
        "pools:\n  - name: mixed\n    model: m\n    gpu: a100\n    instances:\n"
        "      - url: http://127.0.0.1:9001\n      - url: http://127.0.0.1:9002\n        gpu: L4\n"
    )
    endpoints = fleet.to_pools()["mixed"].endpoints
    assert [e.gpu for e in endpoints] == ["a100", "l4"]
    with pytest.raises(ConfigError) as caught:
        parse_fleet("pools:\n  - name: p\n    model: m\n    instances:\n      - url: http://h:1\n        gpu: tpu\n")
    assert "pools[0].instances[0].gpu" in str(caught.value)


def test_running_pools_round_trip_through_a_fleet_file() -> None:
    from fleetgate.pools.config import dump_fleet, fleet_from_pools

    original = parse_fleet(
        "pools:\n  - name: a\n    model: m\n    gpu: l4\n    max_context_tokens: 4096\n    instances:\n"
        "      - url: http://127.0.0.1:9001\n        weight: 2\n      - url: http://127.0.0.1:9002\n        gpu: h100\n"
    ).to_pools()
    assert parse_fleet(dump_fleet(fleet_from_pools(original))).to_pools() == original
