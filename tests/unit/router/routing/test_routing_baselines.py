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
        ({"i0": {"local_inflight": 3}, "i1": {"local_inflight": 1}, "i2": {"local_inflight": 2}}, "i1"),
        ({"i0": {"local_inflight": 4}, "i1": {"local_inflight": 3}, "i2": {"local_inflight": 3}}, "i1"),  # tie: pool order
        ({"i0": {"local_inflight": 1}, "i1": {"local_inflight": 0}, "i2": {"local_inflight": 0}}, "i1"),
        # scraped counts are up to a scrape old: an instance that has since drained is not busy
        ({"i0": {"running": 9, "local_inflight": 0}, "i1": {"local_inflight": 1}, "i2": {"local_inflight": 1}}, "i0"),
    ],
)
def test_least_loaded_picks_the_fewest_in_flight_from_this_router(loads, expected):
    decision = make_router("least-loaded").route(request("x"), pool(3, **loads), NOW)
    assert decision.chosen.name == expected


def test_power_of_two_never_picks_the_most_loaded_and_is_seeded():
    views = pool(4, i2={"local_inflight": 99})
    a, b = make_router("power-of-two", seed=7), make_router("power-of-two", seed=7)
    picks_a = [a.route(request("x"), views, NOW).chosen.name for _ in range(200)]
    picks_b = [b.route(request("x"), views, NOW).chosen.name for _ in range(200)]
    assert picks_a == picks_b
    assert "i2" not in picks_a and len(set(picks_a)) == 3


def test_power_of_two_breaks_a_tie_to_the_first_drawn():
    """`load1 <= load2` keeps worker 1: with equal loads the pick is the first random draw, so
    ties spread uniformly instead of all going to the lowest name."""
    router, views = make_router("power-of-two", seed=3), pool(4)
    picks = Counter(router.route(request("x"), views, NOW).chosen.name for _ in range(400))
    assert set(picks) == {"i0", "i1", "i2", "i3"} and min(picks.values()) > 60


def test_consistent_hash_keeps_a_prefix_on_its_owner_until_the_bound():
    router = make_router("consistent-hash", epsilon=0.25)
    views = pool(4)
    req = request("shared system prompt " * 30)
    owner = router.route(req, views, NOW).chosen.name
    assert all(router.route(req, views, NOW).chosen.name == owner for _ in range(5))
    # bound = ceil(1.25 * (total + 1) / 4); the owner at 6 with others at 1: ceil(1.25 * 10 / 4) = 4 < 7
    loaded = [v for v in views]
    loaded = with_load(loaded, owner, local_inflight=6)
    for v in views:
        if v.name != owner:
            loaded = with_load(loaded, v.name, local_inflight=1)
    assert math.ceil(1.25 * 10 / 4) == 4
    decision = router.route(req, loaded, NOW)
    assert decision.chosen.name != owner and decision.reason == "bounded-load"


def test_session_affinity_is_sticky_and_stable_under_removal():
    router = make_router("session")
    views = pool(6)
    homes = {s: router.route(request("x", session_id=s), views, NOW).chosen.name for s in map(str, range(60))}
    assert len(set(homes.values())) >= 4
    busy = with_load(views, homes["0"], local_inflight=40)
    assert router.route(request("x", session_id="0"), busy, NOW).chosen.name == homes["0"]
    removed = homes["1"]
    remaining = [v for v in views if v.name != removed]
    moved = [s for s, home in homes.items() if home != removed and router.route(request("x", session_id=s), remaining, NOW).chosen.name != home]
    assert moved == []  # rendezvous hashing: only the removed instance's sessions move
    nosession = router.route(request("x"), with_load(views, "i0", local_inflight=3), NOW)
    assert nosession.reason == "no-session" and nosession.chosen.name == "i1"


SYSTEM = "you are a careful assistant; " * 40  # ~1200 chars: 4 full routing blocks + a tail


def inflight(**counts: int) -> dict[str, dict[str, int]]:
    return {name: {"local_inflight": n} for name, n in counts.items()}


@pytest.mark.parametrize(
    ("loads", "text", "expected_reason", "expected"),
    [
        ({}, SYSTEM + "question one", "cache-match", "i1"),  # 4 of 5 blocks: 0.8 > 0.3
        ({}, SYSTEM + "x" * 2000, "cache-match", "i1"),  # 4 of 13 blocks: 0.31 > 0.3
        ({}, SYSTEM + "x" * 2400, "min-load", "i0"),  # 4 of 14 blocks: 0.29 <= 0.3; all idle: pool order, not tree size
        (inflight(i0=2, i1=1, i2=1), SYSTEM + "x" * 2400, "min-load", "i1"),  # fewest in flight, first of the tie
        (inflight(i0=20, i1=100, i2=10), SYSTEM + "question one", "imbalanced", "i2"),  # 90 > 64, 100 > 15
        (inflight(i1=60, i2=10), SYSTEM + "question one", "cache-match", "i1"),  # 60 <= 64: balanced
        (inflight(i0=70, i1=100, i2=80), SYSTEM + "q", "cache-match", "i1"),  # 30 <= 64 and 100 <= 1.5 * 70
        (inflight(i0=0, i1=65, i2=0), SYSTEM + "q", "imbalanced", "i0"),  # 65 > 64 and 65 > 1.5 * 0; first of the tie
        # scraped engine counts are not SGLang's load: a huge stale `running` changes nothing
        ({"i1": {"running": 500}}, SYSTEM + "question one", "cache-match", "i1"),
    ],
)
def test_cache_aware_thresholds_and_load_rules(loads, text, expected_reason, expected):
    router = CacheAware()
    views = pool(3, **loads)
    router.on_dispatch(request(SYSTEM + "question zero", "warm"), views[1].endpoint, NOW)  # i1 holds the system prompt
    router.on_dispatch(request("y" * 5000, "big"), views[0].endpoint, NOW)  # i0 holds a bigger tree
    decision = router.route(request(text), views, NOW)
    assert (decision.reason, decision.chosen.name) == (expected_reason, expected)


@pytest.mark.parametrize(
    ("inserts", "query", "expected"),
    [
        ([("i2", SYSTEM + "a"), ("i0", SYSTEM + "b")], SYSTEM + "c", "i2"),  # same depth: the first inserter
        ([("i2", SYSTEM + "a"), ("i0", SYSTEM + "b"), ("i2", SYSTEM + "a")], SYSTEM + "c", "i2"),  # re-insert keeps it first
        ([("i0", SYSTEM), ("i2", SYSTEM + "z" * 600)], SYSTEM + "z" * 600 + "?", "i2"),  # deeper beats earlier
    ],
)
def test_cache_aware_tie_between_equal_matches_goes_to_the_first_inserter(inserts, query, expected):
    router = CacheAware()
    views = pool(3)
    for k, (name, text) in enumerate(inserts):
        router.on_dispatch(request(text, f"w{k}"), next(v.endpoint for v in views if v.name == name), NOW)
    decision = router.route(request(query), views, NOW)
    assert (decision.reason, decision.chosen.name) == ("cache-match", expected)


def test_cache_aware_ignores_holders_outside_the_pool_and_inserts_on_every_path():
    router = CacheAware()
    views = pool(3)
    router.on_dispatch(request(SYSTEM + "a", "w"), views[2].endpoint, NOW)
    decision = router.route(request(SYSTEM + "b"), views[:2], NOW)  # i2 left the candidate set
    assert decision.reason == "min-load" and decision.chosen.name == "i0"
    router.on_dispatch(request(SYSTEM + "b"), decision.chosen, NOW)
    assert router.route(request(SYSTEM + "c"), views, NOW).chosen.name == "i2"  # i2 inserted first
    assert router.tree.matched_blocks("i0", request(SYSTEM + "b").prefix_hashes) == 5


def test_cache_aware_defaults_are_sglang_router_0_3_2_cli_defaults():
    router = CacheAware()
    assert (router.cache_threshold, router.balance_abs_threshold, router.balance_rel_threshold) == (0.3, 64, 1.5)
    assert router.tree.capacity_blocks * 256 == 2**26


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
