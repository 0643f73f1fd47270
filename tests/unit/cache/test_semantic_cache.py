"""SemanticCache: thresholds, TTL (manual clock), quota eviction, isolation, exact path, load adaptation, coalescing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fleetgate.cache.embed import AsyncBatchingEmbedder, HashingEmbedder
from fleetgate.cache.index import Namespace
from fleetgate.cache.policy import AdaptiveBounds, CachePolicy
from fleetgate.cache.semantic import SemanticCache
from fleetgate.cache.store import (
    CacheUnavailable,
    InMemoryDocumentStore,
    StoreEvent,
)
from fleetgate.core.clock import ManualClock
from fleetgate.core.plan import CacheBypass, CacheHit, CacheMiss, RoutePlan
from fleetgate.core.profile import WorkloadProfile
from fleetgate.core.request import InferenceRequest

EMBEDDER = HashingEmbedder(dim=128)
Q = "how do i reset my password on the website"
PARAPHRASE = "how can i reset my password on the website"


def similarity(a: str, b: str) -> float:
    va, vb = EMBEDDER.embed([a, b])
    return float(va @ vb)


def request(text: str, *, tenant: str = "t1", model: str = "m", system: str | None = None, **fields: Any) -> InferenceRequest:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return InferenceRequest(f"r-{abs(hash(text))}", "chat", model, {"messages": messages}, False,
                            messages=tuple(messages), tenant=tenant, **fields)


def plan(policy: str | None = "faq", pool: str = "p1") -> RoutePlan:
    profile = WorkloadProfile(api="chat", model="m", tenant="t1", prompt_tokens=10, output_tokens=10, turns=1,
                              agentic=False, session_id=None, shape="balanced", context_class="short")
    return RoutePlan(pools=(pool,), router="dualmap", rule="r", profile=profile, cache_policy=policy)


def make_cache(clock: ManualClock, store: Any = None, *, coalesce_timeout_s: float = 5.0, **policy: Any) -> SemanticCache:
    policies = {"faq": CachePolicy(**{"enabled": True, "threshold": 0.9, "ttl_s": 100.0, **policy}),
                "off": CachePolicy(enabled=False)}
    return SemanticCache(
        embedder=AsyncBatchingEmbedder(EMBEDDER, window_s=0.0005),
        store=store if store is not None else InMemoryDocumentStore(clock=clock),
        policies=policies,
        clock=clock,
        coalesce_timeout_s=coalesce_timeout_s,
    )


async def remember(cache: SemanticCache, text: str, answer: str, **req: Any) -> None:
    miss = await cache.lookup(request(text, **req), plan())
    assert isinstance(miss, CacheMiss), miss
    await cache.store(miss, answer, "stop")


@pytest.fixture()
def clock() -> ManualClock:
    return ManualClock(1_000.0)


@pytest.mark.parametrize(("offset", "hits"), [(-0.01, True), (+0.01, False)])
async def test_threshold_decides_a_paraphrase_hit(clock: ManualClock, offset: float, hits: bool) -> None:
    s = similarity(Q, PARAPHRASE)
    assert 0.3 < s < 0.99
    cache = make_cache(clock, threshold=round(s + offset, 4))
    await remember(cache, Q, "Use the reset link.")
    result = await cache.lookup(request(PARAPHRASE), plan())
    assert isinstance(result, CacheHit) == hits
    if hits:
        assert result.text == "Use the reset link." and result.similarity == pytest.approx(s, abs=1e-4)


async def test_exact_match_needs_no_embedding(clock: ManualClock) -> None:
    cache = make_cache(clock)
    await remember(cache, Q, "A")
    batches = cache.embedder.batches
    result = await cache.lookup(request("  How do I RESET my password   on the website "), plan())
    assert result == CacheHit("A", "stop", 1.0)
    assert cache.embedder.batches == batches and cache.stats.exact_hits["faq"] == 1


async def test_ttl_expiry_on_the_manual_clock(clock: ManualClock) -> None:
    cache = make_cache(clock, ttl_s=60.0)
    await remember(cache, Q, "A")
    clock.advance(59.0)
    assert isinstance(await cache.lookup(request(Q), plan()), CacheHit)
    clock.advance(1.0)
    assert isinstance(await cache.lookup(request(Q), plan()), CacheMiss)
    assert cache.sizes() == {} and cache.stats.evictions[("faq", "expired")] == 1


async def test_quota_evicts_fewest_hits_then_oldest(clock: ManualClock) -> None:
    cache = make_cache(clock, max_entries=2)
    await remember(cache, "first question about billing", "1")
    clock.advance(1)
    await remember(cache, "second question about shipping", "2")
    assert isinstance(await cache.lookup(request("first question about billing"), plan()), CacheHit)  # 1 now has a hit
    clock.advance(1)
    await remember(cache, "third question about returns", "3")
    assert isinstance(await cache.lookup(request("second question about shipping"), plan()), CacheMiss)
    assert isinstance(await cache.lookup(request("first question about billing"), plan()), CacheHit)
    assert isinstance(await cache.lookup(request("third question about returns"), plan()), CacheHit)
    assert cache.stats.evictions[("faq", "quota")] == 1
    assert cache.sizes() == {Namespace("t1", "m", "faq"): 2}


@pytest.mark.parametrize(
    "other",
    [
        {"tenant": "t2"},
        {"model": "other-model"},
        {"system": "You answer in French."},
    ],
)
async def test_never_across_tenants_models_or_contexts(clock: ManualClock, other: dict[str, str]) -> None:
    cache = make_cache(clock)
    await remember(cache, Q, "A")
    assert isinstance(await cache.lookup(request(Q, **other), plan()), CacheMiss)


@pytest.mark.parametrize(
    ("policy", "fields", "reason"),
    [
        (None, {}, "no-policy"),
        ("unknown", {}, "no-policy"),
        ("off", {}, "disabled"),
        ("faq", {"temperature": 1.2}, "temperature"),
        ("faq", {"tools": ({"type": "function", "function": {"name": "f"}},)}, "tools"),
        ("faq", {"n": 3}, "n"),
    ],
)
async def test_bypass_reasons(clock: ManualClock, policy: str | None, fields: dict[str, Any], reason: str) -> None:
    cache = make_cache(clock)
    assert await cache.lookup(request(Q, **fields), plan(policy)) == CacheBypass(reason)
    assert sum(cache.stats.bypasses.values()) == 1


@pytest.mark.parametrize(
    ("stored_max", "finish", "asked_max", "hits"),
    [
        (16, "stop", None, True),
        (16, "stop", 500, True),
        (16, "length", 16, True),
        (16, "length", 8, True),
        (16, "length", 17, False),  # the cached answer was cut shorter than this request allows
        (16, "length", None, False),
        (None, "length", 8, False),
    ],
)
async def test_length_answers_serve_only_requests_asking_no_more(
    clock: ManualClock, stored_max: int | None, finish: str, asked_max: int | None, hits: bool
) -> None:
    cache = make_cache(clock)
    miss = await cache.lookup(request(Q, max_tokens=stored_max), plan())
    await cache.store(miss, "an answer", finish)
    assert isinstance(await cache.lookup(request(Q, max_tokens=asked_max), plan()), CacheHit) == hits


async def test_empty_answers_are_not_stored(clock: ManualClock) -> None:
    cache = make_cache(clock)
    miss = await cache.lookup(request(Q), plan())
    await cache.store(miss, "", "stop")
    assert isinstance(await cache.lookup(request(Q), plan()), CacheMiss)
    assert cache.stats.not_stored[("faq", "empty")] == 1


async def test_load_adaptation_relaxes_and_returns(clock: ManualClock) -> None:
    s = similarity(Q, PARAPHRASE)
    cache = make_cache(clock, threshold=0.99, ttl_s=10.0, adaptive=AdaptiveBounds(min_threshold=round(s - 0.05, 3), max_ttl_s=100.0))
    await remember(cache, Q, "A")
    miss = await cache.lookup(request(PARAPHRASE), plan())
    assert isinstance(miss, CacheMiss)
    cache.release(miss)  # its upstream call "failed": nobody waits for it
    cache.on_fleet_snapshot({"p1"})
    relaxed = await cache.lookup(request(PARAPHRASE), plan())
    assert isinstance(relaxed, CacheHit) and cache.stats.relaxed_hits["faq"] == 1
    clock.advance(50.0)  # past ttl_s, within max_ttl_s: still served under pressure
    assert isinstance(await cache.lookup(request(Q), plan()), CacheHit)
    assert isinstance(await cache.lookup(request(PARAPHRASE), plan(pool="p2")), CacheMiss)  # other pool: not relaxed
    cache.on_fleet_snapshot(set())
    assert isinstance(await cache.lookup(request(Q), plan()), CacheMiss)  # TTL back to 10 s
    assert cache.stats.adaptations == {("faq", "relax"): 1, ("faq", "restore"): 1}


async def test_concurrent_identical_misses_coalesce(clock: ManualClock) -> None:
    cache = make_cache(clock)
    leader, follower = asyncio.create_task(cache.lookup(request(Q), plan())), asyncio.create_task(cache.lookup(request(Q), plan()))
    miss = await leader
    assert isinstance(miss, CacheMiss) and not follower.done()
    await cache.store(miss, "shared answer", "stop")
    assert await asyncio.wait_for(follower, 2) == CacheHit("shared answer", "stop", 1.0)
    assert cache.stats.coalesced["faq"] == 1


async def test_a_leader_that_never_answers_releases_waiters_after_the_timeout(clock: ManualClock) -> None:
    cache = make_cache(clock, coalesce_timeout_s=0.05)
    first = await cache.lookup(request(Q), plan())
    second = await asyncio.wait_for(cache.lookup(request(Q), plan()), 2)
    assert isinstance(first, CacheMiss) and isinstance(second, CacheMiss)


class DownStore(InMemoryDocumentStore):
    async def answer(self, entry_id: str) -> Any:
        raise CacheUnavailable("down")

    async def put(self, documents: Any) -> None:
        raise CacheUnavailable("down")


async def test_an_unavailable_store_is_a_miss_never_an_error(clock: ManualClock) -> None:
    cache = make_cache(clock, store=DownStore(clock=clock))
    miss = await cache.lookup(request(Q), plan())
    await cache.store(miss, "A", "stop")  # does not raise
    assert isinstance(await cache.lookup(request(Q), plan()), CacheMiss)
    assert cache.stats.store_unavailable >= 1


async def test_restart_rebuilds_from_the_store_and_replicas_learn_puts(clock: ManualClock) -> None:
    store = InMemoryDocumentStore(clock=clock)
    first = make_cache(clock, store)
    await remember(first, Q, "A")
    second = make_cache(clock, store)
    await second.rebuild()
    assert await second.lookup(request(Q), plan()) == CacheHit("A", "stop", 1.0)
    third = make_cache(clock, store)
    head = next(iter(first._entries.values())).head
    await third.apply(StoreEvent("put", head.entry_id, head))
    assert isinstance(await third.lookup(request(Q), plan()), CacheHit)
    await third.apply(StoreEvent("delete", head.entry_id))
    assert third.sizes() == {}
