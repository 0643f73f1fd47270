"""Purging: paced on the monotonic clock, ages on the wall clock; graphs full of holes are compacted."""

from __future__ import annotations

from typing import Callable

import numpy as np

from fleetgate.cache.entries import Entries
from fleetgate.cache.index import Namespace
from fleetgate.cache.purge import MIN_HOLES_TO_COMPACT, PURGE_INTERVAL_S, Purger
from fleetgate.cache.stats import CacheStats
from fleetgate.cache.store import DocumentHead
from fleetgate.core.clock import ManualClock

NS = Namespace("t1", "m", "faq")


async def test_purges_outlived_entries_once_per_interval(
    entries: Entries, stats: CacheStats, make_head: Callable[..., DocumentHead],
) -> None:
    monotonic, wall = ManualClock(0.0), ManualClock(1_000.0)
    purger = Purger(entries, clock=monotonic, wall_clock=wall)
    entries.remember(make_head("short", created_s=1_000.0, ttl_s=10.0))
    entries.remember(make_head("long", created_s=1_000.0, ttl_s=500.0))
    wall.advance(100.0)
    monotonic.advance(PURGE_INTERVAL_S - 0.1)
    await purger.maybe_purge()
    assert entries.get("short") is not None  # the interval has not passed on the monotonic clock
    monotonic.advance(0.1)
    await purger.maybe_purge()
    assert entries.get("short") is None and entries.get("long") is not None
    assert stats.evictions == {("faq", "expired"): 1}
    wall.advance(400.0)
    await purger.maybe_purge()  # just purged: waits for the next interval
    assert entries.get("long") is not None


async def test_compacts_a_graph_with_more_holes_than_entries(
    entries: Entries, clock: ManualClock, make_head: Callable[..., DocumentHead],
) -> None:
    purger = Purger(entries, clock=clock, wall_clock=clock)
    count = MIN_HOLES_TO_COMPACT + 10
    for i, vector in enumerate(np.random.default_rng(3).standard_normal((count, 4))):
        entries.remember(make_head(f"e{i}", vector=vector, ttl_s=3_600.0))
    entries.forget([f"e{i}" for i in range(count - 5)], "quota")
    holey = entries.index.get(NS)
    assert holey is not None and holey.deleted_slots == count - 5
    await purger.maybe_purge()
    assert entries.index.get(NS) is holey  # not before the interval
    clock.advance(PURGE_INTERVAL_S)
    await purger.maybe_purge()
    compact = entries.index.get(NS)
    assert compact is not holey and compact is not None and compact.deleted_slots == 0
    assert sorted(compact.ids()) == sorted(f"e{i}" for i in range(count - 5, count))


async def test_a_few_holes_are_left_for_reuse(entries: Entries, clock: ManualClock, make_head: Callable[..., DocumentHead]) -> None:
    purger = Purger(entries, clock=clock, wall_clock=clock)
    for i in range(10):
        entries.remember(make_head(f"e{i}", vector=(1, i, 0, 0), ttl_s=3_600.0))
    entries.forget([f"e{i}" for i in range(9)], "quota")
    graph = entries.index.get(NS)
    clock.advance(PURGE_INTERVAL_S)
    await purger.maybe_purge()
    assert entries.index.get(NS) is graph
