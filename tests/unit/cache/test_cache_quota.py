"""Quota eviction: expired (under the TTL in force) first, then fewest hits, then oldest; only when over the quota."""

from __future__ import annotations

from typing import Callable

import pytest

from fleetgate.cache.entries import Entries, Entry
from fleetgate.cache.index import Namespace
from fleetgate.cache.quota import least_valuable, make_room
from fleetgate.cache.stats import CacheStats
from fleetgate.cache.store import DocumentHead

NOW_S = 1_000.0


@pytest.mark.parametrize(
    ("spec", "ttl_s", "count", "victims"),
    [
        # spec: entry id -> (age seconds, hits)
        ({"old": (50, 0), "new": (10, 0)}, 100, 1, ["old"]),
        ({"old": (50, 3), "new": (10, 0)}, 100, 1, ["new"]),  # hits outweigh age
        ({"stale": (150, 9), "fresh": (10, 0)}, 100, 1, ["stale"]),  # expired outweighs hits
        ({"stale": (150, 9), "fresh": (10, 0)}, 200, 1, ["fresh"]),  # a relaxed TTL keeps it fresh
        ({"a": (30, 1), "b": (20, 0), "c": (10, 0)}, 100, 2, ["b", "c"]),
        ({"a": (30, 1)}, 100, 0, []),
    ],
)
def test_least_valuable(
    make_head: Callable[..., DocumentHead], spec: dict[str, tuple[float, int]], ttl_s: float, count: int, victims: list[str],
) -> None:
    candidates = [Entry(make_head(entry_id, created_s=NOW_S - age_s, ttl_s=1_000.0), hits) for entry_id, (age_s, hits) in spec.items()]
    assert least_valuable(candidates, count, now_s=NOW_S, ttl_s=ttl_s) == victims


@pytest.mark.parametrize(
    ("stored", "exclude", "max_entries", "evicted"),
    [
        (["a", "b"], "c", 3, []),  # room left
        (["a", "b"], "c", 2, ["a"]),  # the oldest goes
        (["a", "b"], "b", 2, []),  # replacing itself needs no room
        (["a", "b", "c"], "d", 1, ["a", "b", "c"]),  # a lowered quota evicts down to it
    ],
)
def test_make_room(
    entries: Entries, stats: CacheStats,
    make_head: Callable[..., DocumentHead], stored: list[str], exclude: str, max_entries: int, evicted: list[str]
) -> None:
    for age_s, entry_id in enumerate(reversed(stored)):  # the first stored is the oldest
        entries.remember(make_head(entry_id, created_s=NOW_S - age_s))
    entries.remember(make_head("elsewhere", namespace=Namespace("t2", "m", "faq")))  # other namespaces never count
    ns = Namespace("t1", "m", "faq")
    assert make_room(entries, ns, max_entries, exclude=exclude, now_s=NOW_S, ttl_s=100.0) == evicted
    assert all(entries.get(e) is None for e in evicted) and stats.evictions[("faq", "quota")] == len(evicted)
