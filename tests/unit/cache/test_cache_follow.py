"""Following the store: a rebuild takes what the store holds, other replicas' events are applied as they come."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

import numpy as np
import pytest

from fleetgate.cache.entries import Entries
from fleetgate.cache.follow import StoreFollower
from fleetgate.cache.index import Namespace
from fleetgate.cache.stats import CacheStats
from fleetgate.cache.store import (
    Answer,
    CacheDocument,
    CacheUnavailable,
    DocumentHead,
    InMemoryDocumentStore,
    StoreEvent,
)
from fleetgate.core.clock import ManualClock

NS = Namespace("t1", "m", "faq")


class FeedStore(InMemoryDocumentStore):
    """Other replicas' events, fed by the test; `fed.join()` returns once the follower has applied them all."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.fed: asyncio.Queue[StoreEvent] = asyncio.Queue()
        self.down = False

    async def heads(self, batch_size: int = 500) -> AsyncIterator[list[DocumentHead]]:
        if self.down:
            raise CacheUnavailable("down")
        async for batch in super().heads(batch_size=1):  # one head a batch: rebuilds must gather them all
            yield batch

    async def events(self) -> AsyncIterator[StoreEvent]:
        while True:
            yield await self.fed.get()
            self.fed.task_done()  # the follower asked for the next one: it has applied this one


@pytest.fixture()
def store(clock: ManualClock) -> FeedStore:
    return FeedStore(clock)


@pytest.fixture()
def follower(store: FeedStore, entries: Entries, stats: CacheStats, clock: ManualClock) -> StoreFollower:
    return StoreFollower(store, entries, stats, wall_clock=clock)


async def test_rebuild_takes_the_live_documents(
    follower: StoreFollower, store: FeedStore, entries: Entries, stats: CacheStats,
    make_head: Callable[..., DocumentHead], clock: ManualClock
) -> None:
    entries.remember(make_head("only-here"))
    heads = [make_head("a"), make_head("long", vector=(0, 0, 0, 0)), make_head("old", created_s=900.0, ttl_s=150.0)]
    await store.put([CacheDocument(h, Answer("x", "stop")) for h in heads])
    clock.advance(60.0)  # "old" is now past its longest TTL
    await follower.rebuild()
    assert entries.get("only-here") is None and entries.get("old") is None
    assert entries.sizes() == {NS: 2} and stats.rebuilds == 1
    graph = entries.index.get(NS)
    assert graph is not None and sorted(graph.ids()) == ["a"]  # the exact-only entry is known but not embedded


async def test_rebuild_keeps_what_it_knows_while_the_store_is_down(
    follower: StoreFollower, store: FeedStore, entries: Entries, stats: CacheStats, make_head: Callable[..., DocumentHead]
) -> None:
    entries.remember(make_head("a"))
    store.down = True
    await follower.rebuild()
    assert entries.get("a") is not None and stats.store_unavailable == 1 and stats.rebuilds == 0


async def test_apply(
    follower: StoreFollower, store: FeedStore, entries: Entries, stats: CacheStats, make_head: Callable[..., DocumentHead],
) -> None:
    head = make_head("theirs")
    await follower.apply(StoreEvent("put", head.entry_id, head))
    assert entries.get("theirs") is not None
    await follower.apply(StoreEvent("put", "headless"))  # malformed: ignored
    await follower.apply(StoreEvent("delete", head.entry_id))
    assert entries.get("theirs") is None and stats.evictions == {("faq", "deleted"): 1}
    await store.put([CacheDocument(make_head("missed"), Answer("x", "stop"))])
    await follower.apply(StoreEvent("resync"))
    assert entries.get("missed") is not None and stats.rebuilds == 1


async def test_follows_events_in_the_background_until_stopped(
    follower: StoreFollower, store: FeedStore, entries: Entries, make_head: Callable[..., DocumentHead]
) -> None:
    broken = DocumentHead("broken", NS, "ctx", 1_000.0, 100.0, np.ones(7, dtype=np.float32))  # wrong dimension
    follower.start()
    for head in (broken, make_head("theirs")):
        store.fed.put_nowait(StoreEvent("put", head.entry_id, head))
    await asyncio.wait_for(store.fed.join(), 2.0)
    assert entries.get("theirs") is not None  # a bad event is logged, the next one still applied
    await follower.stop()
    store.fed.put_nowait(StoreEvent("delete", "theirs"))
    await asyncio.sleep(0)
    assert entries.get("theirs") is not None
