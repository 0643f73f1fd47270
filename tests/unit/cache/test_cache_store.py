"""The in-memory document store's served hits: kept per tenant, for a TTL on the injected clock, within a bound."""

from __future__ import annotations

import pytest

from fleetgate.cache.index import Namespace
from fleetgate.cache.store import InMemoryDocumentStore, ServedHit
from fleetgate.core.clock import ManualClock

HIT = ServedHit("e1", Namespace("t1", "m", "faq"))


async def test_a_served_hit_is_taken_once_and_only_by_its_tenant(clock: ManualClock) -> None:
    store = InMemoryDocumentStore(clock=clock)
    await store.remember_hit("r1", HIT, ttl_s=60.0)
    assert await store.take_hit("r1", "t2") is None
    assert await store.take_hit("r2", "t1") is None
    assert await store.take_hit("r1", "t1") == HIT
    assert await store.take_hit("r1", "t1") is None


async def test_tenants_may_reuse_a_request_id(clock: ManualClock) -> None:
    store = InMemoryDocumentStore(clock=clock)
    other = ServedHit("e2", Namespace("t2", "m", "faq"))
    await store.remember_hit("r1", HIT, ttl_s=60.0)
    await store.remember_hit("r1", other, ttl_s=60.0)
    assert (await store.take_hit("r1", "t2"), await store.take_hit("r1", "t1")) == (other, HIT)


@pytest.mark.parametrize(("after_s", "kept"), [(59.9, True), (60.0, False)])
async def test_a_served_hit_expires_on_the_clock(clock: ManualClock, after_s: float, kept: bool) -> None:
    store = InMemoryDocumentStore(clock=clock)
    await store.remember_hit("r1", HIT, ttl_s=60.0)
    clock.advance(after_s)
    assert (await store.take_hit("r1", "t1") == HIT) is kept


async def test_the_oldest_served_hits_go_beyond_the_bound(clock: ManualClock) -> None:
    store = InMemoryDocumentStore(clock=clock, max_served_hits=2)
    for request_id in ("r1", "r2"):
        await store.remember_hit(request_id, HIT, ttl_s=60.0)
    await store.remember_hit("r1", HIT, ttl_s=60.0)  # served again: now the newest
    await store.remember_hit("r3", HIT, ttl_s=60.0)
    assert [await store.take_hit(r, "t1") is not None for r in ("r1", "r2", "r3")] == [True, False, True]
