"""Semantic cache on a real redis-server with the real embedding model (all-MiniLM-L6-v2, offline) and the shipped verifier.

Paraphrase hits, restart rebuild, two replicas sharing one Redis, a Redis outage mid-run, verified hits,
documents written before questions were kept, and feedback that drops a wrong hit for every replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator, Iterator

import pytest
import redis.asyncio as redis
from support.gateway import eventually
from support.redis_server import RedisServer

from fleetgate.cache.embed import AsyncBatchingEmbedder, SentenceTransformerEmbedder
from fleetgate.cache.policy import CachePolicy
from fleetgate.cache.semantic import SemanticCache
from fleetgate.cache.store import RedisDocumentStore
from fleetgate.core.plan import CacheHit, CacheMiss, RoutePlan
from fleetgate.core.profile import WorkloadProfile
from fleetgate.core.request import InferenceRequest
from fleetgate.core.usage import Usage

pytestmark = pytest.mark.integration

QUESTION = "How do I reset my password?"
PARAPHRASE = "I forgot my password, how can I change it?"
UNRELATED = "What is the capital of France?"
LAPTOP = "What is the best laptop under 500 dollars?"
LAPTOP_1000 = "What is the best laptop under 1000 dollars?"  # one number apart: another question
LAPTOP_PARAPHRASE = "What's the best laptop for under 500 dollars?"
POLICIES = {"faq": CachePolicy(enabled=True, threshold=0.8, ttl_s=3600.0, max_entries=100)}


@pytest.fixture(scope="module")
def model() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(max_threads=1)


@pytest.fixture()
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def request(text: str, request_id: str | None = None) -> InferenceRequest:
    messages = ({"role": "user", "content": text},)
    return InferenceRequest(request_id or f"r{time.monotonic_ns()}", "chat", "m", {"messages": list(messages)}, False,
                            messages=messages)


PROFILE = WorkloadProfile(api="chat", model="m", tenant="default", prompt_tokens=10, output_tokens=10, turns=1,
                          agentic=False, session_id=None, shape="balanced", context_class="short")
PLAN = RoutePlan(pools=("p1",), router="dualmap", rule="r", profile=PROFILE, cache_policy="faq")


@contextlib.asynccontextmanager
async def semantic_cache(model: SentenceTransformerEmbedder, url: str) -> AsyncIterator[SemanticCache]:
    # a generous socket timeout: a busy CI machine must not turn a store into a miss (a stopped
    # Redis refuses connections at once, which is what the outage test exercises)
    store = RedisDocumentStore(url, socket_timeout_s=2.0, cooldown_s=0.2, events_block_ms=100)
    cache = SemanticCache(embedder=AsyncBatchingEmbedder(model), store=store, policies=POLICIES)
    await cache.start()
    try:
        yield cache
    finally:
        await cache.stop()


async def remember(cache: SemanticCache, text: str, answer: str) -> None:
    miss = await cache.lookup(request(text), PLAN)
    assert isinstance(miss, CacheMiss), miss
    await cache.store(miss, answer, "stop")


async def test_paraphrase_hits_and_unrelated_misses(model: SentenceTransformerEmbedder, redis_server: RedisServer) -> None:
    async with semantic_cache(model, redis_server.url) as cache:
        await remember(cache, QUESTION, "Click 'Forgot password' on the sign-in page.")
        hit = await cache.lookup(request(PARAPHRASE), PLAN)
        assert isinstance(hit, CacheHit) and hit.text.startswith("Click") and 0.8 <= hit.similarity < 1.0
        assert isinstance(await cache.lookup(request(UNRELATED), PLAN), CacheMiss)


async def test_restart_rebuilds_the_index_from_redis(model: SentenceTransformerEmbedder, redis_server: RedisServer) -> None:
    async with semantic_cache(model, redis_server.url) as cache:
        await remember(cache, QUESTION, "A")
    async with semantic_cache(model, redis_server.url) as restarted:
        assert restarted.stats.rebuilds == 1 and sum(restarted.sizes().values()) == 1
        assert isinstance(await restarted.lookup(request(PARAPHRASE), PLAN), CacheHit)


async def test_two_replicas_learn_each_others_entries_and_deletions(model: SentenceTransformerEmbedder, redis_server: RedisServer) -> None:
    async with semantic_cache(model, redis_server.url) as a, semantic_cache(model, redis_server.url) as b:
        started = time.monotonic()
        await remember(a, QUESTION, "from replica a")
        await eventually(lambda: sum(b.sizes().values()) == 1, timeout_s=5.0, what="replica b learning a's entry")
        learned_s = time.monotonic() - started
        hit = await b.lookup(request(PARAPHRASE), PLAN)
        assert isinstance(hit, CacheHit) and hit.text == "from replica a", learned_s
        b.update_policies({"faq": POLICIES["faq"].model_copy(update={"max_entries": 1})})
        await remember(b, UNRELATED, "Paris")  # b's quota evicts a's entry and tells everyone
        await eventually(lambda: sum(a.sizes().values()) == 1 and a.stats.evictions[("faq", "deleted")] == 1,
                         timeout_s=5.0, what="replica a learning b's deletion")


async def test_redis_outage_is_a_miss_and_the_cache_recovers(model: SentenceTransformerEmbedder, redis_server: RedisServer) -> None:
    async with semantic_cache(model, redis_server.url) as cache:
        await remember(cache, QUESTION, "A")
        redis_server.stop()
        for text in (QUESTION, PARAPHRASE, UNRELATED):
            started = time.monotonic()
            result = await cache.lookup(request(text), PLAN)
            assert isinstance(result, CacheMiss) and time.monotonic() - started < 0.5
            await cache.store(result, "not stored", "stop")  # fails fast inside, never raises
        assert cache.stats.store_unavailable >= 3
        redis_server.start()

        async def hits_again() -> bool:
            result = await cache.lookup(request(PARAPHRASE), PLAN)
            if isinstance(result, CacheMiss):
                cache.release(result)  # as the gateway does when it gives up on a miss
            return isinstance(result, CacheHit)

        deadline = time.monotonic() + 5.0
        while not await hits_again():
            assert time.monotonic() < deadline, "the cache did not recover within 5 s of Redis coming back"
            await asyncio.sleep(0.05)
        await remember(cache, UNRELATED, "Paris")
        assert isinstance(await cache.lookup(request("What's the capital of France?"), PLAN), CacheHit)


async def test_the_verifier_refuses_a_candidate_one_number_apart(model: SentenceTransformerEmbedder, redis_server: RedisServer) -> None:
    async with semantic_cache(model, redis_server.url) as cache:
        await remember(cache, LAPTOP, "The X1.")
        assert isinstance(await cache.lookup(request(LAPTOP_1000), PLAN), CacheMiss)  # cosine about 0.9: a candidate
        assert cache.stats.verifier_rejections == {"faq": 1}
        hit = await cache.lookup(request(LAPTOP_PARAPHRASE), PLAN)
        assert isinstance(hit, CacheHit) and hit.verifier_score is not None and hit.verifier_score >= 0.8
        cache.update_policies({"faq": POLICIES["faq"].model_copy(update={"verify": False})})
        served = await cache.lookup(request(LAPTOP_1000), PLAN)
        assert isinstance(served, CacheHit) and served.text == "The X1." and served.verifier_score is None


async def test_a_document_written_before_questions_were_kept_is_an_exact_hit_only(
    model: SentenceTransformerEmbedder, redis_server: RedisServer,
) -> None:
    async with semantic_cache(model, redis_server.url) as cache:
        await remember(cache, QUESTION, "A")
        client = redis.Redis.from_url(redis_server.url)
        try:
            keys = [key async for key in client.scan_iter(match="fleetgate:cache:doc:*")]
            assert len(keys) == 1 and await client.hdel(keys[0], "question") == 1  # the older gateway's format
        finally:
            await client.aclose()
        assert isinstance(await cache.lookup(request(PARAPHRASE), PLAN), CacheMiss)
        assert cache.stats.verifier_rejections == {"faq": 1}
        assert await cache.lookup(request(QUESTION), PLAN) == CacheHit("A", "stop", 1.0)


async def test_usage_is_stored_with_the_answer_and_older_documents_load_without_it(
    model: SentenceTransformerEmbedder, redis_server: RedisServer,
) -> None:
    async with semantic_cache(model, redis_server.url) as cache:
        miss = await cache.lookup(request(QUESTION), PLAN)
        assert isinstance(miss, CacheMiss)
        await cache.store(miss, "A", "stop", Usage(30, 1, 16))
        assert await cache.lookup(request(QUESTION), PLAN) == CacheHit("A", "stop", 1.0, usage=Usage(30, 1, 16))
        client = redis.Redis.from_url(redis_server.url)
        try:
            [key] = [key async for key in client.scan_iter(match="fleetgate:cache:doc:*")]
            assert await client.hdel(key, "usage") == 1  # as an older gateway wrote it
        finally:
            await client.aclose()
        assert await cache.lookup(request(QUESTION), PLAN) == CacheHit("A", "stop", 1.0)  # replayed with estimated usage


async def test_feedback_drops_a_wrong_hit_for_every_replica(model: SentenceTransformerEmbedder, redis_server: RedisServer) -> None:
    async with semantic_cache(model, redis_server.url) as a, semantic_cache(model, redis_server.url) as b:
        await remember(a, QUESTION, "from replica a")
        await eventually(lambda: sum(b.sizes().values()) == 1, timeout_s=5.0, what="replica b learning a's entry")
        assert isinstance(await b.lookup(request(PARAPHRASE, "req-1"), PLAN), CacheHit)
        client = redis.Redis.from_url(redis_server.url)
        try:
            served = [key async for key in client.scan_iter(match="fleetgate:cache:hit:*")]
            assert len(served) == 1 and 3590 <= await client.ttl(served[0]) <= 3600  # kept for an hour, then gone
        finally:
            await client.aclose()
        assert not await a.feedback("req-1", "key-someone-else")
        assert not await a.feedback("req-2", "default")
        assert await a.feedback("req-1", "default")  # b served it; a knows it through Redis
        assert not await b.feedback("req-1", "default")  # once
        assert a.stats.false_hits == {"faq": 1} and a.sizes() == {}
        await eventually(lambda: sum(b.sizes().values()) == 0 and b.stats.evictions[("faq", "deleted")] == 1,
                         timeout_s=5.0, what="replica b dropping the reported entry")
        for replica in (a, b):
            assert isinstance(await replica.lookup(request(PARAPHRASE), PLAN), CacheMiss)
