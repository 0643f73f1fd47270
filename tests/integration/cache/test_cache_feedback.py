"""Verified cache hits through the real gateway with the official openai client: emulated vLLM behind it, a
private redis-server for documents, the real embedding model and the shipped verifier.

A verified hit says how similar and how verified it was; a near-miss the verifier refuses and a request
with `Cache-Control: no-cache` go upstream; a hit reported wrong through `POST /v1/cache/feedback` is
dropped, and only its own API key can report it. Outcomes are judged by the x-fleetgate-cache header.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import openai
import pytest
from support.gateway import MODEL, emulators, gateway
from support.redis_server import RedisServer

pytestmark = pytest.mark.integration

VERIFIER_THRESHOLD = 0.5
POLICY = f"""
version: 1
topic: {{default_category: general}}
categories:
  - name: accounts
    keywords: [password]
    cache: {{enabled: true, threshold: 0.8, verify: true, verifier_threshold: {VERIFIER_THRESHOLD}, ttl_s: 3600}}
  - name: general
    cache: {{enabled: false}}
"""
QUESTION = "How do I reset my password?"
PARAPHRASE = "How can I reset my password?"  # cosine 0.99, verifier 0.94
NEAR_MISS = "Why can't I reset my password?"  # cosine 0.86, above the threshold; verifier 0.15: another question


def client(url: str, key: str = "key-of-alice") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


@pytest.fixture()
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@contextlib.asynccontextmanager
async def fleet(tmp_path: Path, **settings: Any) -> AsyncIterator[str]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    async with emulators(1) as servers, gateway([s.url for s in servers], policy=str(policy), redis_timeout_s=2.0,
                                                **settings) as url:
        yield url


async def ask(url: str, text: str, key: str = "key-of-alice", **options: Any) -> dict[str, str]:
    raw = await client(url, key).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=16, temperature=0, **options)
    raw.parse()
    return dict(raw.headers)


async def feedback(url: str, body: dict[str, Any], key: str = "key-of-alice") -> Any:
    return await client(url, key).post("/cache/feedback", cast_to=object, body=body)


async def test_a_verified_hit_carries_its_scores_and_the_verifier_or_the_client_can_refuse_one(
        tmp_path: Path, redis_server: RedisServer) -> None:
    async with fleet(tmp_path, redis_url=redis_server.url) as url:
        assert (await ask(url, QUESTION))["x-fleetgate-cache"] == "miss"
        hit = await ask(url, PARAPHRASE)
        assert hit["x-fleetgate-cache"] == "hit" and hit["x-fleetgate-route"] == "cache-hit"
        assert 0.8 <= float(hit["x-fleetgate-cache-similarity"]) < 1.0
        assert VERIFIER_THRESHOLD <= float(hit["x-fleetgate-cache-verifier"]) <= 1.0
        refused = await ask(url, NEAR_MISS)  # similar enough for the threshold alone, but not the same question
        assert refused["x-fleetgate-cache"] == "miss" and "x-fleetgate-cache-verifier" not in refused
        fresh = await ask(url, PARAPHRASE, extra_headers={"Cache-Control": "no-cache"})
        assert fresh["x-fleetgate-cache"] == "bypass" and fresh["x-fleetgate-route"] != "cache-hit"


async def test_feedback_drops_a_wrong_hit_for_its_own_key_only(tmp_path: Path, redis_server: RedisServer) -> None:
    async with fleet(tmp_path, redis_url=redis_server.url) as url:
        await ask(url, QUESTION)
        await ask(url, QUESTION, key="key-of-bob")  # bob has an entry of his own (tenants never share)
        hit = await ask(url, PARAPHRASE)
        assert hit["x-fleetgate-cache"] == "hit"

        with pytest.raises(openai.NotFoundError) as other_key:
            await feedback(url, {"request_id": hit["x-request-id"]}, key="key-of-bob")
        error = other_key.value.body
        assert error["code"] == "cache_hit_not_found" and error["type"] == "invalid_request_error"
        assert (await ask(url, PARAPHRASE))["x-fleetgate-cache"] == "hit"  # bob's report dropped nothing of alice's
        assert (await ask(url, PARAPHRASE, key="key-of-bob"))["x-fleetgate-cache"] == "hit"  # nor of his own

        assert await feedback(url, {"request_id": hit["x-request-id"], "reason": "wrong question"}) == {"dropped": True}
        assert (await ask(url, PARAPHRASE))["x-fleetgate-cache"] == "miss"  # the entry that answered it is gone
        with pytest.raises(openai.NotFoundError) as again:
            await feedback(url, {"request_id": hit["x-request-id"]})
        assert again.value.body == error  # reported twice or never served: the same answer

        with pytest.raises(openai.BadRequestError) as malformed:
            await feedback(url, {"id": hit["x-request-id"]})
        assert malformed.value.body["param"] == "request_id"


async def test_feedback_without_a_cache_is_a_clear_404(tmp_path: Path) -> None:
    async with fleet(tmp_path, semantic_cache=False) as url:
        with pytest.raises(openai.NotFoundError) as no_cache:
            await feedback(url, {"request_id": "anything"})
        assert "without a semantic cache" in no_cache.value.body["message"]
