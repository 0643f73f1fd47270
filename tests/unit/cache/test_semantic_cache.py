"""SemanticCache end to end over its parts: paraphrase hits, the exact path, TTLs, quotas, isolation, load
adaptation, coalescing, outages and restarts, verification, client opt-out and feedback; all on manual clocks
(the parts have their own tests). The verifier is the shipped model."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fleetgate.cache.embed import AsyncBatchingEmbedder, HashingEmbedder
from fleetgate.cache.index import Namespace
from fleetgate.cache.keys import request_key
from fleetgate.cache.policy import AdaptiveBounds, CachePolicy
from fleetgate.cache.semantic import SemanticCache
from fleetgate.cache.store import (
    Answer,
    CacheDocument,
    CacheUnavailable,
    DocumentHead,
    InMemoryDocumentStore,
)
from fleetgate.cache.verify import default_model
from fleetgate.core.clock import ManualClock
from fleetgate.core.plan import CacheBypass, CacheHit, CacheMiss, RoutePlan
from fleetgate.core.profile import WorkloadProfile
from fleetgate.core.request import InferenceRequest

EMBEDDER = HashingEmbedder(dim=128)
Q = "how do i reset my password on the website"
PARAPHRASE = "how can i reset my password on the website"
LAPTOP = "what is the best laptop under 500 dollars"
LAPTOP_PARAPHRASE = "what is the best laptop for under 500 dollars"  # the shipped verifier scores it about 0.47
LAPTOP_1000 = "what is the best laptop under 1000 dollars"  # one number apart: another question (scored about 0.1)


def similarity(a: str, b: str) -> float:
    va, vb = EMBEDDER.embed([a, b])
    return float(va @ vb)


def request(text: str, *, request_id: str = "r", tenant: str = "t1", model: str = "m", system: str | None = None,
            **fields: Any) -> InferenceRequest:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return InferenceRequest(request_id, "chat", model, {"messages": messages}, False,
                            messages=tuple(messages), tenant=tenant, **fields)


def plan(policy: str | None = "faq", pool: str = "p1") -> RoutePlan:
    profile = WorkloadProfile(api="chat", model="m", tenant="t1", prompt_tokens=10, output_tokens=10, turns=1,
                              agentic=False, session_id=None, shape="balanced", context_class="short")
    return RoutePlan(pools=(pool,), router="dualmap", rule="r", profile=profile, cache_policy=policy)


def make_cache(
    clock: ManualClock, store: Any = None, *, wall_clock: ManualClock | None = None,
    embedder: AsyncBatchingEmbedder | None = None, coalesce_timeout_s: float = 5.0, **policy: Any,
) -> SemanticCache:
    """A cache whose clocks are both `clock` unless `wall_clock` is given."""
    wall_clock = wall_clock or clock
    policies = {"faq": CachePolicy(**{"enabled": True, "threshold": 0.9, "ttl_s": 100.0, **policy}),
                "off": CachePolicy(enabled=False)}
    return SemanticCache(
        embedder=embedder or AsyncBatchingEmbedder(EMBEDDER, window_s=0.0005),
        store=store if store is not None else InMemoryDocumentStore(clock=wall_clock),
        policies=policies,
        clock=clock,
        wall_clock=wall_clock,
        coalesce_timeout_s=coalesce_timeout_s,
    )


async def remember(cache: SemanticCache, text: str, answer: str, **req: Any) -> None:
    miss = await cache.lookup(request(text, **req), plan())
    assert isinstance(miss, CacheMiss), miss
    await cache.store(miss, answer, "stop")


@pytest.mark.parametrize(("offset", "hits"), [(-0.01, True), (+0.01, False)])
async def test_threshold_decides_a_paraphrase_hit(clock: ManualClock, offset: float, hits: bool) -> None:
    s = similarity(Q, PARAPHRASE)
    assert 0.3 < s < 0.99
    cache = make_cache(clock, threshold=round(s + offset, 4), verify=False)  # the cosine alone decides
    await remember(cache, Q, "Use the reset link.")
    result = await cache.lookup(request(PARAPHRASE), plan())
    assert isinstance(result, CacheHit) == hits
    if hits:
        assert result.text == "Use the reset link." and result.similarity == pytest.approx(s, abs=1e-4)


async def test_exact_match_needs_no_embedding(clock: ManualClock) -> None:
    embedder = AsyncBatchingEmbedder(EMBEDDER, window_s=0.0005)
    cache = make_cache(clock, embedder=embedder)
    await remember(cache, Q, "A")
    batches = embedder.batches
    result = await cache.lookup(request("  How do I RESET my password   on the website "), plan())
    assert result == CacheHit("A", "stop", 1.0)
    assert embedder.batches == batches and cache.stats.exact_hits["faq"] == 1


async def test_keys_too_long_to_embed_are_exact_match_only(clock: ManualClock) -> None:
    embedder = AsyncBatchingEmbedder(EMBEDDER, window_s=0.0005)
    cache = make_cache(clock, embedder=embedder, threshold=0.5)
    long_question = Q + " please" * 200
    await remember(cache, long_question, "A")
    assert embedder.batches == 0
    assert await cache.lookup(request(long_question), plan()) == CacheHit("A", "stop", 1.0)
    assert isinstance(await cache.lookup(request(long_question + " now"), plan()), CacheMiss)
    assert cache.sizes() == {Namespace("t1", "m", "faq"): 1}


async def test_ttl_expiry_on_the_manual_clock(clock: ManualClock) -> None:
    cache = make_cache(clock, ttl_s=60.0)
    await remember(cache, Q, "A")
    clock.advance(59.0)
    assert isinstance(await cache.lookup(request(Q), plan()), CacheHit)
    clock.advance(1.0)
    assert isinstance(await cache.lookup(request(Q), plan()), CacheMiss)
    assert cache.sizes() == {} and cache.stats.evictions[("faq", "expired")] == 1


async def test_entries_age_on_the_wall_clock_and_coalescing_runs_on_the_monotonic_one(clock: ManualClock) -> None:
    wall = ManualClock(1_700_000_000.0)
    cache = make_cache(clock, wall_clock=wall, ttl_s=60.0)
    await remember(cache, Q, "A")
    clock.advance(3_600.0)  # in-process time alone never ages an entry
    assert isinstance(await cache.lookup(request(Q), plan()), CacheHit)
    wall.advance(60.0)
    miss = await cache.lookup(request(Q), plan())
    assert isinstance(miss, CacheMiss) and miss.key.leader
    assert cache.stats.evictions == {("faq", "expired"): 1}  # seen by the cache, not only by the store
    wall.advance(3_600.0)  # wall time alone never frees a slot: an identical lookup waits
    waiter = asyncio.create_task(cache.lookup(request(Q), plan()))
    await asyncio.sleep(0)  # one turn of the loop: it is waiting now
    assert not waiter.done()
    cache.release(miss)
    released = await asyncio.wait_for(waiter, 2)
    assert isinstance(released, CacheMiss) and not released.key.leader  # it waited, then went upstream


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


@pytest.mark.parametrize("other", [{"tenant": "t2"}, {"model": "other-model"}, {"system": "You answer in French."}])
async def test_never_across_tenants_models_or_contexts(clock: ManualClock, other: dict[str, str]) -> None:
    cache = make_cache(clock)
    await remember(cache, Q, "A")
    assert isinstance(await cache.lookup(request(Q, **other), plan()), CacheMiss)


@pytest.mark.parametrize(
    ("policy", "fields", "reason"),
    [(None, {}, "no-policy"), ("unknown", {}, "no-policy"), ("off", {}, "disabled"), ("faq", {"n": 3}, "n"),
     ("faq", {"cache_bypass": True}, "client-no-cache")],
)
async def test_bypasses_are_counted_by_reason(clock: ManualClock, policy: str | None, fields: dict[str, Any], reason: str) -> None:
    cache = make_cache(clock)
    assert await cache.lookup(request(Q, **fields), plan(policy)) == CacheBypass(reason)
    assert cache.stats.bypasses == {(policy or "none", reason): 1}


@pytest.mark.parametrize(("asked_max", "hits"), [(16, True), (17, False)])
async def test_length_answers_serve_only_requests_asking_no_more(clock: ManualClock, asked_max: int, hits: bool) -> None:
    cache = make_cache(clock)
    miss = await cache.lookup(request(Q, max_tokens=16), plan())
    await cache.store(miss, "an answer", "length")
    assert isinstance(await cache.lookup(request(Q, max_tokens=asked_max), plan()), CacheHit) == hits


async def test_refused_answers_are_not_stored_and_release_their_waiters(clock: ManualClock) -> None:
    cache = make_cache(clock)
    miss = await cache.lookup(request(Q), plan())
    waiter = asyncio.create_task(cache.lookup(request(Q), plan()))
    await asyncio.sleep(0)  # one turn of the loop: it is waiting now
    await cache.store(miss, "", "stop")
    released = await asyncio.wait_for(waiter, 2)
    assert isinstance(released, CacheMiss) and not released.key.leader  # it waited, then went upstream
    assert cache.stats.not_stored == {("faq", "empty"): 1} and cache.sizes() == {}


async def test_load_adaptation_relaxes_and_returns(clock: ManualClock) -> None:
    s = similarity(Q, PARAPHRASE)
    cache = make_cache(clock, threshold=0.99, ttl_s=10.0, adaptive=AdaptiveBounds(min_threshold=round(s - 0.05, 3), max_ttl_s=100.0),
                       verify=False)
    await remember(cache, Q, "A")
    miss = await cache.lookup(request(PARAPHRASE), plan())
    assert isinstance(miss, CacheMiss)
    cache.release(miss)  # its upstream call "failed": nobody waits for it
    cache.set_pool_pressure("p1", True)
    relaxed = await cache.lookup(request(PARAPHRASE), plan())
    assert isinstance(relaxed, CacheHit) and cache.stats.relaxed_hits["faq"] == 1
    clock.advance(50.0)  # past ttl_s, within max_ttl_s: still served under pressure
    assert isinstance(await cache.lookup(request(Q), plan()), CacheHit)
    assert isinstance(await cache.lookup(request(PARAPHRASE), plan(pool="p2")), CacheMiss)  # other pool: not relaxed
    cache.set_pool_pressure("p1", False)
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


async def test_a_leader_past_the_timeout_blocks_nobody(clock: ManualClock) -> None:
    cache = make_cache(clock, coalesce_timeout_s=5.0)
    first = await cache.lookup(request(Q), plan())
    clock.advance(5.0)
    second = await asyncio.wait_for(cache.lookup(request(Q), plan()), 2)
    assert isinstance(first, CacheMiss) and isinstance(second, CacheMiss) and second.key.leader


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
    assert cache.stats.store_unavailable >= 1 and cache.stats.not_stored[("faq", "store-unavailable")] == 1


async def test_a_restart_starts_from_what_the_store_holds(clock: ManualClock) -> None:
    store = InMemoryDocumentStore(clock=clock)
    await remember(make_cache(clock, store), Q, "A")
    restarted = make_cache(clock, store)
    await restarted.start()
    try:
        assert await restarted.lookup(request(Q), plan()) == CacheHit("A", "stop", 1.0)
        assert restarted.stats.rebuilds == 1 and restarted.sizes() == {Namespace("t1", "m", "faq"): 1}
    finally:
        await restarted.stop()


# ---- verification ------------------------------------------------------------------------------------


@pytest.mark.parametrize("verify", [True, False])
async def test_a_candidate_one_number_apart_is_served_only_without_the_verifier(clock: ManualClock, verify: bool) -> None:
    assert similarity(LAPTOP, LAPTOP_1000) >= 0.8  # a candidate: the cosine alone would serve it
    cache = make_cache(clock, threshold=0.8, verify=verify)
    await remember(cache, LAPTOP, "The X1.")
    result = await cache.lookup(request(LAPTOP_1000), plan())
    assert isinstance(result, CacheHit) is not verify
    assert cache.stats.verifier_rejections == ({"faq": 1} if verify else {})
    if not verify:
        assert result.text == "The X1." and result.verifier_score is None


@pytest.mark.parametrize(("verifier_threshold", "hits"), [(None, False), (0.3, True)])
async def test_the_policy_sets_the_score_a_candidate_needs(clock: ManualClock, verifier_threshold: float | None, hits: bool) -> None:
    cache = make_cache(clock, threshold=0.8, verifier_threshold=verifier_threshold)
    await remember(cache, LAPTOP, "The X1.")
    result = await cache.lookup(request(LAPTOP_PARAPHRASE), plan())
    assert isinstance(result, CacheHit) == hits
    if hits:  # the score of the query against the stored question, at the neighbour's cosine
        assert result.verifier_score == default_model().score(LAPTOP_PARAPHRASE, LAPTOP, result.similarity)
        assert 0.3 <= result.verifier_score < default_model().operating_point.threshold


async def test_relaxation_lowers_the_similarity_threshold_never_the_verifier(clock: ManualClock) -> None:
    cache = make_cache(clock, threshold=0.95, verifier_threshold=0.3, adaptive=AdaptiveBounds(min_threshold=0.8, max_ttl_s=100.0))
    await remember(cache, LAPTOP, "The X1.")
    for text in (LAPTOP_PARAPHRASE, LAPTOP_1000):  # below 0.95: not even candidates
        miss = await cache.lookup(request(text), plan())
        assert isinstance(miss, CacheMiss)
        cache.release(miss)
    assert cache.stats.verifier_rejections == {}
    cache.set_pool_pressure("p1", True)
    assert isinstance(await cache.lookup(request(LAPTOP_1000), plan()), CacheMiss)  # a candidate now, still refused
    assert cache.stats.verifier_rejections == {"faq": 1}
    relaxed = await cache.lookup(request(LAPTOP_PARAPHRASE), plan())
    assert isinstance(relaxed, CacheHit) and relaxed.verifier_score is not None and relaxed.verifier_score >= 0.3
    assert cache.stats.relaxed_hits == {"faq": 1}


async def test_a_document_stored_before_questions_were_kept_is_an_exact_hit_only(clock: ManualClock) -> None:
    store = InMemoryDocumentStore(clock=clock)
    namespace = Namespace("t1", "m", "faq")
    key = request_key(request(LAPTOP), namespace)
    assert key is not None
    head = DocumentHead(key.entry_id, namespace, key.context_hash, clock(), 100.0, EMBEDDER.embed([LAPTOP])[0])
    await store.put([CacheDocument(head, Answer("The X1.", "stop"))])  # no question: written by an older gateway
    cache = make_cache(clock, store, threshold=0.8, verifier_threshold=0.0)  # any question would pass
    await cache.start()
    try:
        assert isinstance(await cache.lookup(request(LAPTOP_PARAPHRASE), plan()), CacheMiss)
        assert cache.stats.verifier_rejections == {"faq": 1}
        assert await cache.lookup(request(LAPTOP), plan()) == CacheHit("The X1.", "stop", 1.0)
    finally:
        await cache.stop()


async def test_a_client_that_refuses_cached_answers_is_not_served_one(clock: ManualClock) -> None:
    cache = make_cache(clock)
    await remember(cache, Q, "A")
    assert await cache.lookup(request(Q, cache_bypass=True), plan()) == CacheBypass("client-no-cache")
    assert await cache.lookup(request(Q), plan()) == CacheHit("A", "stop", 1.0)


# ---- feedback --------------------------------------------------------------------------------------


async def test_feedback_drops_the_entry_that_served_the_request(clock: ManualClock) -> None:
    cache = make_cache(clock, threshold=0.8, verifier_threshold=0.3)
    await remember(cache, LAPTOP, "The X1.")
    assert isinstance(await cache.lookup(request(LAPTOP_PARAPHRASE, request_id="wrong"), plan()), CacheHit)
    assert await cache.feedback("wrong", "t1")
    assert cache.stats.false_hits == {"faq": 1} and cache.stats.evictions == {("faq", "feedback"): 1} and cache.sizes() == {}
    assert isinstance(await cache.lookup(request(LAPTOP_PARAPHRASE), plan()), CacheMiss)
    assert not await cache.feedback("wrong", "t1")  # a report counts once
    assert cache.stats.false_hits == {"faq": 1}


@pytest.mark.parametrize(
    ("request_id", "tenant", "after_s", "dropped", "owner_may_still"),
    [
        ("served", "t1", 3_599.0, True, False),  # a report counts once
        ("served", "t1", 3_600.0, False, False),  # past the feedback TTL
        ("served", "t2", 0.0, False, True),  # another tenant's request id: it neither drops nor uses up the owner's
        ("unknown", "t1", 0.0, False, True),
    ],
)
async def test_feedback_is_for_the_served_tenant_within_the_ttl(
    clock: ManualClock, request_id: str, tenant: str, after_s: float, dropped: bool, owner_may_still: bool,
) -> None:
    cache = make_cache(clock, ttl_s=10_000.0)
    await remember(cache, Q, "A")
    assert await cache.lookup(request(Q, request_id="served"), plan()) == CacheHit("A", "stop", 1.0)  # exact hits count too
    clock.advance(after_s)
    assert await cache.feedback(request_id, tenant) is dropped
    assert cache.stats.false_hits == ({"faq": 1} if dropped else {})
    assert isinstance(await cache.lookup(request(Q), plan()), CacheMiss if dropped else CacheHit)
    assert await cache.feedback("served", "t1") is owner_may_still


async def test_feedback_on_a_coalesced_hit_drops_the_entry_that_answered_it(clock: ManualClock) -> None:
    cache = make_cache(clock, threshold=0.8, verifier_threshold=0.3)
    await remember(cache, LAPTOP, "The X1.")
    leader = asyncio.create_task(cache.lookup(request(LAPTOP_PARAPHRASE, request_id="first"), plan()))
    follower = asyncio.create_task(cache.lookup(request(LAPTOP_PARAPHRASE, request_id="second"), plan()))
    first, second = await asyncio.gather(leader, follower)
    assert isinstance(first, CacheHit) and second == first and cache.stats.coalesced == {"faq": 1}
    assert await cache.feedback("second", "t1") and cache.sizes() == {}


class ForgetfulStore(InMemoryDocumentStore):
    """Holds documents, but cannot keep which hit served which request."""

    async def remember_hit(self, request_id: str, hit: Any, ttl_s: float) -> None:
        raise CacheUnavailable("down")

    async def take_hit(self, request_id: str, tenant: str) -> Any:
        raise CacheUnavailable("down")


async def test_a_store_that_cannot_remember_hits_still_serves_them(clock: ManualClock) -> None:
    cache = make_cache(clock, store=ForgetfulStore(clock=clock))
    await remember(cache, Q, "A")
    assert await cache.lookup(request(Q), plan()) == CacheHit("A", "stop", 1.0)
    assert not await cache.feedback("r", "t1")
    assert cache.stats.store_unavailable == 2
