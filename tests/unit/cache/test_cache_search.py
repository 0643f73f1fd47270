"""Search: the exact entry or the best fresh neighbour with the same context; stale knowledge is forgotten on read."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from fleetgate.cache.entries import Entries
from fleetgate.cache.index import Namespace
from fleetgate.cache.search import Demand, Found, Search
from fleetgate.cache.stats import CacheStats
from fleetgate.cache.store import (
    Answer,
    CacheDocument,
    CacheUnavailable,
    DocumentHead,
    InMemoryDocumentStore,
)
from fleetgate.core.clock import ManualClock

NS = Namespace("t1", "m", "faq")
NOW = Demand(max_tokens=None, now_s=1_000.0, ttl_s=10.0)


async def known(entries: Entries, store: InMemoryDocumentStore, head: DocumentHead, answer: Answer | None = None) -> None:
    """An entry this process knows and the store holds (unless `answer` is None)."""
    entries.remember(head)
    if answer is not None:
        await store.put([CacheDocument(head, answer)])


@pytest.fixture()
def store(clock: ManualClock) -> InMemoryDocumentStore:
    return InMemoryDocumentStore(clock=clock)


@pytest.mark.parametrize(
    ("age_s", "answer", "demand", "served", "evicted"),
    [
        (0.0, Answer("A", "stop"), NOW, True, None),
        (9.9, Answer("A", "stop"), NOW, True, None),
        (10.0, Answer("A", "stop"), NOW, False, None),  # past the TTL in force, still within its longest
        (50.0, Answer("A", "stop"), Demand(None, 1_000.0, ttl_s=60.0), True, None),  # a relaxed TTL serves it
        (100.0, Answer("A", "stop"), NOW, False, "expired"),  # past the longest TTL: never again
        (0.0, None, NOW, False, "gone"),  # the store lost it (another replica deleted it, Redis expired it)
        (0.0, Answer("A", "length", 16), Demand(32, 1_000.0, 10.0), False, None),  # cut shorter than asked
    ],
)
async def test_exact(
    entries: Entries, stats: CacheStats, store: InMemoryDocumentStore, make_head: Callable[..., DocumentHead],
    age_s: float, answer: Answer | None, demand: Demand, served: bool, evicted: str | None,
) -> None:
    await known(entries, store, make_head("e", created_s=1_000.0 - age_s, ttl_s=100.0), answer)
    search = Search(entries, store)
    assert await search.exact("e", demand) == (answer if served else None)
    assert await search.exact("unknown", demand) is None
    assert (entries.get("e") is None) == (evicted is not None)
    assert stats.evictions == ({("faq", evicted): 1} if evicted else {})
    assert entries.get("e") is None or entries.get("e").hits == int(served)


async def test_nearest_skips_other_contexts_and_stale_neighbours(
    entries: Entries, store: InMemoryDocumentStore, make_head: Callable[..., DocumentHead]
) -> None:
    await known(entries, store, make_head("same-text-other-context", vector=(1, 0, 0, 0), context_hash="other"), Answer("X", "stop"))
    await known(entries, store, make_head("closest-but-old", vector=(1, 0.1, 0, 0), created_s=980.0), Answer("Y", "stop"))
    await known(entries, store, make_head("close", vector=(1, 0.3, 0, 0)), Answer("Z", "stop"))
    await known(entries, store, make_head("far", vector=(0, 1, 0, 0)), Answer("W", "stop"))
    query = np.asarray((1, 0, 0, 0), dtype=np.float32)
    search = Search(entries, store)
    found = await search.nearest(NS, "ctx", query, 0.9, NOW)
    assert isinstance(found, Found) and found.answer.text == "Z"
    assert found.similarity == pytest.approx(1 / np.hypot(1, 0.3), abs=1e-4)
    assert await search.nearest(NS, "ctx", query, 0.99, NOW) is None  # only the stale one is that close
    assert await search.nearest(Namespace("t2", "m", "faq"), "ctx", query, 0.0, NOW) is None


async def test_k_bounds_how_many_neighbours_are_tried(
    entries: Entries, store: InMemoryDocumentStore, make_head: Callable[..., DocumentHead],
) -> None:
    await known(entries, store, make_head("nearest-other-context", vector=(1, 0, 0, 0), context_hash="other"), Answer("X", "stop"))
    await known(entries, store, make_head("second", vector=(1, 0.2, 0, 0)), Answer("Y", "stop"))
    query = np.asarray((1, 0, 0, 0), dtype=np.float32)
    assert await Search(entries, store, k=1).nearest(NS, "ctx", query, 0.5, NOW) is None
    assert await Search(entries, store, k=2).nearest(NS, "ctx", query, 0.5, NOW) is not None


async def test_an_unavailable_store_raises_for_the_caller_to_count(
    entries: Entries, make_head: Callable[..., DocumentHead], clock: ManualClock,
) -> None:
    class DownStore(InMemoryDocumentStore):
        async def answer(self, entry_id: str) -> Answer | None:
            raise CacheUnavailable("down")

    entries.remember(make_head("e"))
    with pytest.raises(CacheUnavailable):
        await Search(entries, DownStore(clock=clock)).exact("e", NOW)
    assert entries.get("e") is not None  # not forgotten: the store is down, not empty
