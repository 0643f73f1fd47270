"""Semantic cache through the real gateway with the official openai client: emulated vLLM behind it,
a private redis-server for documents, the real embedding model.

A paraphrase of an answered question is served from the cache (non-streaming and as SSE), a second
gateway sharing the Redis answers it too, and a Redis outage fails no request.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import AsyncIterator, Iterator

import aiohttp
import openai
import pytest
from support.gateway import ACCOUNTS_CACHE_POLICY, MODEL, emulators, gateway
from support.redis_server import RedisServer

pytestmark = pytest.mark.integration

QUESTION = "How do I reset my password?"
PARAPHRASE = "I forgot my password, how can I change it?"


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="test-key", max_retries=0, timeout=30)


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture()
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@contextlib.asynccontextmanager
async def fleet(tmp_path: Path, redis_url: str, replicas: int = 1) -> AsyncIterator[list[str]]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(ACCOUNTS_CACHE_POLICY)
    async with emulators(1) as servers, contextlib.AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(gateway([s.url for s in servers], policy=str(policy), redis_url=redis_url,
                                                               redis_timeout_s=2.0))  # CI may be busy
                for _ in range(replicas)]
        yield urls


async def ask(url: str, text: str) -> tuple[str, dict[str, str]]:
    raw = await client(url).chat.completions.with_raw_response.create(model=MODEL, messages=chat(text), max_tokens=16, temperature=0)
    return raw.parse().choices[0].message.content or "", dict(raw.headers)


async def test_paraphrase_hit_through_the_gateway_plain_and_streaming(tmp_path: Path, redis_server: RedisServer) -> None:
    async with fleet(tmp_path, redis_server.url) as (url,):
        answer, headers = await ask(url, QUESTION)
        assert headers["x-fleetgate-route"] != "cache-hit" and headers["x-fleetgate-cache"] == "miss"
        cached, headers = await ask(url, PARAPHRASE)
        assert headers["x-fleetgate-route"] == "cache-hit" and headers["x-fleetgate-cache"] == "hit"
        assert cached == answer
        assert 0.8 <= float(headers["x-fleetgate-cache-similarity"]) < 1.0
        stream = await client(url).chat.completions.create(model=MODEL, messages=chat(PARAPHRASE), max_tokens=16,
                                                           temperature=0, stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == answer
        _, headers = await ask(url, "What is the weather like today?")  # category general: cache disabled
        assert headers["x-fleetgate-cache"] == "bypass"
        async with aiohttp.ClientSession() as session:
            metrics = await (await session.get(url + "/metrics")).text()
        assert 'fleetgate_cache_entries{category="accounts"} 1.0' in metrics
        assert 'fleetgate_cache_lookups_total{category="accounts",outcome="hit"} 2.0' in metrics


async def test_two_gateways_share_entries_and_survive_a_redis_outage(tmp_path: Path, redis_server: RedisServer) -> None:
    async with fleet(tmp_path, redis_server.url, replicas=2) as (first, second):
        answer, _ = await ask(first, QUESTION)
        for attempt in range(50):  # the second replica learns the entry through the Redis stream (bounded poll)
            cached, headers = await ask(second, PARAPHRASE)
            if headers["x-fleetgate-route"] == "cache-hit":
                break
        assert headers["x-fleetgate-route"] == "cache-hit" and cached == answer, attempt
        redis_server.stop()
        for text in (QUESTION, PARAPHRASE, "What is my password policy?"):
            _, headers = await ask(first, text)  # served uncached, never an error
            assert headers["x-fleetgate-route"] != "cache-hit"
        redis_server.start()
        for attempt in range(100):
            _, headers = await ask(first, PARAPHRASE)
            if headers["x-fleetgate-route"] == "cache-hit":
                break
        assert headers["x-fleetgate-route"] == "cache-hit", "the cache did not recover after Redis came back"


async def test_a_hit_reports_the_usage_stored_with_its_answer_and_counts_it_saved(tmp_path: Path,
                                                                                 redis_server: RedisServer) -> None:
    async with fleet(tmp_path, redis_server.url) as (url,):
        c = client(url)
        first = await c.chat.completions.create(model=MODEL, messages=chat(QUESTION), max_tokens=16, temperature=0)
        hit = await c.chat.completions.with_raw_response.create(model=MODEL, messages=chat(PARAPHRASE), max_tokens=16,
                                                                temperature=0)
        assert hit.headers["x-fleetgate-cache"] == "hit"
        assert first.usage is not None and hit.parse().usage == first.usage  # the question's, not a stand-in for the paraphrase
        stream = await c.chat.completions.create(model=MODEL, messages=chat(PARAPHRASE), max_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
        assert chunks[-1].choices == [] and chunks[-1].usage == first.usage
        async with aiohttp.ClientSession() as session:
            metrics = await (await session.get(url + "/metrics")).text()
        saved = 2 * (first.usage.prompt_tokens + first.usage.completion_tokens)
        assert f'fleetgate_cache_tokens_saved_total{{model="{MODEL}",tenant="anonymous"}} {float(saved)}' in metrics
