"""Semantic cache on a real redis-server with the real embedding model (all-MiniLM-L6-v2, offline).

Paraphrase hits, restart rebuild, two replicas sharing one Redis, and a Redis outage mid-run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator, Iterator

import pytest
from support.gateway import eventually
from support.redis_server import RedisServer

from fleetgate.cache.embed import AsyncBatchingEmbedder, SentenceTransformerEmbedder
from fleetgate.cache.policy import CachePolicy
from fleetgate.cache.semantic import SemanticCache
from fleetgate.cache.store import RedisDocumentStore
from fleetgate.core.plan import CacheHit, CacheMiss, RoutePlan
from fleetgate.core.profile import WorkloadProfile
from fleetgate.core.request import InferenceRequest

pytestmark = pytest.mark.integration

QUESTION = "How do I reset my password?"
PARAPHRASE = "I forgot my password, how can I change it?"
UNRELATED = "What is the capital of France?"
POLICIES = {"faq": CachePolicy(enabled=True, threshold=0.8, ttl_s=3600.0, max_entries=100)}


@pytest.fixture(scope="module")
def model() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(max_threads=1)


@pytest.fixture()
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def request(text: str) -> InferenceRequest:
    messages = ({"role": "user", "content": text},)
    return InferenceRequest(f"r{time.monotonic_ns()}", "chat", "m", {"messages": list(messages)}, False, messages=messages)


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
        assert isinstance(await cache.lookup(request("Which city is the capital of France?"), PLAN), CacheHit)
