"""Hash rings: replicas agree, keys spread evenly, weights scale shares, scale events move ~2/N."""

from collections import Counter

import pytest

from fleetgate.pools.model import Endpoint
from fleetgate.router.routing.ring import (
    DualRing,
    HashRing,
    RingCache,
    membership_of,
    remap_fraction,
)

SEEDS = (11, 29)


def endpoints(n: int, weights: dict[int, float] | None = None) -> list[Endpoint]:
    weights = weights or {}
    return [Endpoint(f"i{i}", f"http://h{i}", "p", "m", weight=weights.get(i, 1.0)) for i in range(n)]


def chi_square(counts: Counter, names: list[str], total: int) -> float:
    expected = total / len(names)
    return sum((counts.get(n, 0) - expected) ** 2 / expected for n in names)


def test_two_independently_built_rings_give_the_same_pair():
    a = DualRing(membership_of(endpoints(16)), SEEDS)
    b = DualRing(membership_of(list(reversed(endpoints(16)))), SEEDS)
    keys = list(range(0, 10**6, 997)) + ["session-a", "session-b"]
    assert [a.pair(k) for k in keys] == [b.pair(k) for k in keys]


@pytest.mark.parametrize("n", [2, 3, 8, 64])
def test_second_candidate_always_differs(n):
    ring = DualRing(membership_of(endpoints(n)), SEEDS)
    assert all(c1 != c2 for c1, c2 in (ring.pair(k) for k in range(2000)))


def test_single_instance_pool_pairs_with_itself():
    assert DualRing(membership_of(endpoints(1)), SEEDS).pair(5) == ("i0", "i0")


@pytest.mark.parametrize("which", [0, 1])
def test_distinct_prefixes_spread_over_64_instances(which):
    eps = endpoints(64)
    names = [e.name for e in eps]
    ring = DualRing(membership_of(eps), SEEDS)
    total = 64 * 50
    counts = Counter(ring.pair(k * 7919 + 13)[which] for k in range(total))
    # 63 degrees of freedom: p = 0.001 critical value is 103.4
    assert chi_square(counts, names, total) < 103.4
    assert len(counts) == 64


def test_seeds_are_independent():
    ring = DualRing(membership_of(endpoints(8)), SEEDS)
    same_owner = sum(ring.first.lookup(k) == ring.second.lookup(k) for k in range(8000))
    assert 0.08 < same_owner / 8000 < 0.17  # 1/8 when independent


def test_weight_scales_the_share_of_keys():
    ring = HashRing(membership_of(endpoints(4, {0: 3.0})), seed=5)
    counts = Counter(ring.lookup(k) for k in range(20000))
    assert 0.45 < counts["i0"] / 20000 < 0.55  # 3 / (3 + 1 + 1 + 1)


@pytest.mark.parametrize(
    ("n", "change"),
    [(8, "add"), (8, "remove"), (64, "add"), (64, "remove")],
)
def test_scale_event_remaps_about_two_over_n_keys(n, change):
    before = DualRing(membership_of(endpoints(n)), SEEDS)
    after_eps = endpoints(n + 1) if change == "add" else endpoints(n)[1:]
    after = DualRing(membership_of(after_eps), SEEDS)
    fraction = remap_fraction(before, after, list(range(20000)))
    expected = 2 / max(n, len(after_eps))
    assert 0.7 * expected < fraction < 1.3 * expected


def test_candidates_walk_distinct_instances_in_ring_order():
    ring = HashRing(membership_of(endpoints(5)), seed=3)
    order = ring.candidates(42, 5)
    assert sorted(order) == [f"i{i}" for i in range(5)] and order[0] == ring.lookup(42)
    assert ring.candidates(42, 3, exclude=order[0]) == order[1:4]


@pytest.mark.parametrize("n", [1, 2, 3, 12, 64])
def test_fast_lookups_agree_with_the_ring_walk(n):
    """`first` reads a slice of points and `pair` the points past c1 directly (the decision's fast
    paths); both must give what walking the ring gives, including wrap-around and tiny pools."""
    ring = DualRing(membership_of(endpoints(n)), SEEDS, vnodes_per_weight=4 if n < 12 else 256)
    for key in [*range(3000), "session-a", "session-b"]:
        walked = list(ring.second.walk(key))
        assert ring.second.first(key, 10) == walked[:10]
        c1 = ring.first.lookup(key)
        assert ring.pair(key) == (c1, next((name for name in walked if name != c1), c1))


def test_ring_cache_positions_follow_the_order_of_the_endpoints():
    cache = RingCache(SEEDS)
    eps = endpoints(4)
    rings = cache.get(eps)
    assert cache.positions == {"i0": 0, "i1": 1, "i2": 2, "i3": 3}
    assert cache.get(eps[::-1]) is rings and cache.positions == {"i3": 0, "i2": 1, "i1": 2, "i0": 3}


def test_ring_cache_rebuilds_only_on_membership_or_weight_change():
    cache = RingCache(SEEDS)
    eps = endpoints(4)
    first = cache.get(eps)
    assert cache.get(list(eps)) is first
    assert cache.get([Endpoint(e.name, e.url, e.pool, e.model) for e in eps]) is first  # equal, not identical
    assert cache.get(eps[:3]) is not first
    assert cache.get(endpoints(4, {1: 2.0})) is not first
    assert cache.get(eps) is first  # still cached


def test_empty_ring_is_an_error():
    with pytest.raises(ValueError):
        HashRing((), seed=1)
