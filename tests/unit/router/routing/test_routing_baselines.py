"""Each baseline router's defining behaviour, plus the registry and the approximate prefix tree."""

import math
from collections import Counter

import pytest
from support.routing_views import names, pool, request, with_load

from fleetgate.router.routing.cache_aware import CacheAware
from fleetgate.router.routing.prefix_index import PrefixIndex
from fleetgate.router.routing.registry import ROUTER_NAMES, make_router

NOW = 0.0


@pytest.mark.parametrize("name", ROUTER_NAMES)
def test_every_router_returns_each_instance_once(name):
    router = make_router(name)
    views = pool(5, i3={"running": 2})
    for k in range(20):
        req = request(f"prompt {k} " * 40, f"r{k}", session_id=f"s{k % 3}")
        decision = router.route(req, views, NOW)
        assert sorted(names(decision)) == sorted(v.name for v in views)
        router.on_dispatch(req, decision.chosen, NOW)
        router.on_first_token(req, decision.chosen, NOW)
        router.on_finish(req, decision.chosen, NOW, True)


def test_registry_rejects_unknown_names_and_parameters():
    with pytest.raises(ValueError, match="dualmap"):
        make_router("random")
    with pytest.raises(ValueError, match="bad parameters"):
        make_router("round-robin", seed=1)


def test_round_robin_cycles_regardless_of_load():
    router = make_router("round-robin")
    views = pool(3, i0={"running": 50})
    assert [router.route(request("x"), views, NOW).chosen.name for _ in range(6)] == ["i0", "i1", "i2"] * 2


@pytest.mark.parametrize(
    ("loads", "expected"),
    [
        ({"i0": {"running": 3}, "i1": {"waiting": 1}, "i2": {"running": 2}}, "i1"),
        ({"i0": {"local_inflight": 4}, "i1": {"running": 3}, "i2": {"running": 3}}, "i1"),  # tie by name
        ({"i0": {"running": 1}, "i1": {"running": 1, "local_inflight": 5}, "i2": {"running": 2}}, "i0"),
    ],
)
def test_least_loaded_picks_the_shortest_queue(loads, expected):
    decision = make_router("least-loaded").route(request("x"), pool(3, **loads), NOW)
    assert decision.chosen.name == expected


def test_power_of_two_never_picks_the_most_loaded_and_is_seeded():
    views = pool(4, i2={"running": 99})
    a, b = make_router("power-of-two", seed=7), make_router("power-of-two", seed=7)
    picks_a = [a.route(request("x"), views, NOW).chosen.name for _ in range(200)]
    picks_b = [b.route(request("x"), views, NOW).chosen.name for _ in range(200)]
    assert picks_a == picks_b
    assert "i2" not in picks_a and len(set(picks_a)) == 3


def test_consistent_hash_keeps_a_prefix_on_its_owner_until_the_bound():
    router = make_router("consistent-hash", epsilon=0.25)
    views = pool(4)
    req = request("shared system prompt " * 30)
    owner = router.route(req, views, NOW).chosen.name
    assert all(router.route(req, views, NOW).chosen.name == owner for _ in range(5))
    # bound = ceil(1.25 * (total + 1) / 4); the owner at 6 with others at 1: ceil(1.25 * 10 / 4) = 4 < 7
    loaded = [v for v in views]
    loaded = with_load(loaded, owner, running=6)
    for v in views:
        if v.name != owner:
            loaded = with_load(loaded, v.name, running=1)
    assert math.ceil(1.25 * 10 / 4) == 4
    decision = router.route(req, loaded, NOW)
    assert decision.chosen.name != owner and decision.reason == "bounded-load"


def test_session_affinity_is_sticky_and_stable_under_removal():
    router = make_router("session")
    views = pool(6)
    homes = {s: router.route(request("x", session_id=s), views, NOW).chosen.name for s in map(str, range(60))}
    assert len(set(homes.values())) >= 4
    busy = with_load(views, homes["0"], running=40)
    assert router.route(request("x", session_id="0"), busy, NOW).chosen.name == homes["0"]
    removed = homes["1"]
    remaining = [v for v in views if v.name != removed]
    moved = [s for s, home in homes.items() if home != removed and router.route(request("x", session_id=s), remaining, NOW).chosen.name != home]
    assert moved == []  # rendezvous hashing: only the removed instance's sessions move
    nosession = router.route(request("x"), with_load(views, "i0", running=3), NOW)
    assert nosession.reason == "no-session" and nosession.chosen.name == "i1"


SYSTEM = "you are a careful assistant; " * 40  # ~1200 chars: 4 routing blocks


@pytest.mark.parametrize(
    ("loads", "text", "expected_reason"),
    [
        ({}, SYSTEM + "question one", "cache-match"),  # 4 of 5 blocks match > 0.5
        ({}, SYSTEM[:300] + "x" * 2000, "smallest-tree"),  # 1 of 9 blocks match
        ({"i0": {"running": 20}, "i1": {"running": 100}, "i2": {"running": 10}}, SYSTEM + "question one", "imbalanced"),
        ({"i1": {"running": 60}, "i2": {"running": 10}}, SYSTEM + "question one", "cache-match"),  # 50 <= 64: balanced
        ({"i1": {"running": 100}, "i2": {"running": 80}, "i0": {"running": 70}}, SYSTEM + "q", "cache-match"),  # 100 <= 1.5 * 70
    ],
)
def test_cache_aware_balance_thresholds_and_match_ratio(loads, text, expected_reason):
    router = CacheAware()
    views = pool(3, **loads)
    warm = request(SYSTEM + "question zero", "warm")
    router.on_dispatch(warm, views[1].endpoint, NOW)  # i1 holds the system prompt
    router.on_dispatch(request("y" * 5000, "big"), views[0].endpoint, NOW)  # i0 holds the largest tree
    decision = router.route(request(text), views, NOW)
    assert decision.reason == expected_reason
    expected = {"cache-match": "i1", "smallest-tree": "i2", "imbalanced": "i2"}[expected_reason]
    assert decision.chosen.name == expected


def test_cache_aware_tree_is_bounded_by_size_with_lru_eviction():
    router = CacheAware(max_tree_chars=256 * 10)
    views = pool(2)
    router.on_dispatch(request("a" * 256 * 8, "a"), views[0].endpoint, NOW)
    router.on_dispatch(request("b" * 256 * 8, "b"), views[0].endpoint, NOW)
    assert router.tree.size("i0") == 10
    assert router.tree.matched_blocks("i0", request("b" * 256 * 8).prefix_hashes) == 8
    assert router.tree.matched_blocks("i0", request("a" * 256 * 8).prefix_hashes) == 2  # leaves went first


def test_prefix_index_longest_match_prefers_deepest_then_most_recent():
    index = PrefixIndex(100)
    index.insert("a", [1, 2, 3])
    index.insert("b", [1, 2])
    index.insert("c", [1, 2])
    assert index.longest_match([1, 2, 3, 4], ["a", "b", "c"]) == ("a", 3)
    assert index.longest_match([1, 2, 9], ["a", "b", "c"]) == ("c", 2)
    assert index.longest_match([1, 2, 9], ["a", "b"]) == ("b", 2)
    assert index.longest_match([7], ["a"]) == (None, 0)
    index.forget("a")
    assert index.longest_match([1, 2, 3], ["a", "b", "c"]) == ("c", 2)
    assert Counter(index.size(n) for n in "abc") == Counter({0: 1, 2: 2})
