"""`/v1/messages` through the bare gateway with the official `anthropic` client, in front of emulated
vLLM: plain and streamed answers as vLLM gives them, errors in Anthropic's shape, usage counted as for
the OpenAI APIs, the same conversation in either API on the same instance, and semantic cache hits
replayed as a message and as its typed events."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import anthropic
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.gateway import ACCOUNTS_CACHE_POLICY, MODEL, emulators, gateway
from support.redis_server import RedisServer

pytestmark = pytest.mark.integration

SYSTEM = "You are a terse assistant for a bicycle shop. " * 3


def conversation(topic: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"Which tyre fits rim number {topic}?"},
            {"role": "assistant", "content": [{"type": "text", "text": "A 28 mm one."}]},
            {"role": "user", "content": [{"type": "text", "text": "And for the rear wheel?"}]}]


def as_chat(topic: int) -> list[dict[str, Any]]:
    """The same conversation as an OpenAI chat client writes it."""
    return [{"role": "system", "content": f"Shop {topic}. {SYSTEM}"}, {"role": "user", "content": f"Which tyre fits rim number {topic}?"},
            {"role": "assistant", "content": "A 28 mm one."}, {"role": "user", "content": "And for the rear wheel?"}]


def claude(url: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=url, api_key="test-key", max_retries=0, timeout=30)


async def token_totals(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as session:
        text = await (await session.get(url + "/metrics")).text()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name.endswith("_tokens_total")}


async def test_plain_and_streamed_messages_match_the_backend_and_are_counted() -> None:
    async with emulators(1) as servers, gateway([servers[0].url]) as url:
        direct = await claude(servers[0].url).messages.create(model=MODEL, max_tokens=12, system=SYSTEM,
                                                               messages=conversation(1))
        raw = await claude(url).messages.with_raw_response.create(model=MODEL, max_tokens=12, system=SYSTEM,
                                                                   messages=conversation(1))
        message = await raw.parse()
        assert raw.headers["x-fleetgate-instance"] == "default-0"
        assert message.content[0].text == direct.content[0].text and message.stop_reason == direct.stop_reason
        assert message.usage.cache_read_input_tokens > 0  # the same prompt twice: a prefix-cache hit

        async with claude(url).messages.stream(model=MODEL, max_tokens=12, system=SYSTEM,
                                               messages=conversation(1)) as stream:
            kinds = [event.type async for event in stream]
            streamed = await stream.get_final_message()
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "content_block_delta" in kinds
        assert streamed.content[0].text == direct.content[0].text

        totals = await token_totals(url)
        prompt = [m.usage.input_tokens + m.usage.cache_read_input_tokens for m in (message, streamed)]
        assert totals["fleetgate_prompt_tokens_total"] == sum(prompt)
        assert totals["fleetgate_cached_tokens_total"] == message.usage.cache_read_input_tokens + \
            streamed.usage.cache_read_input_tokens
        assert totals["fleetgate_completion_tokens_total"] == 24


async def test_errors_come_back_in_anthropics_shape() -> None:
    async with emulators(1) as servers, gateway([servers[0].url]) as url:
        client = claude(url)
        with pytest.raises(anthropic.NotFoundError) as unknown:
            await client.messages.create(model="no-such-model", max_tokens=8, messages=conversation(1))
        assert unknown.value.body["type"] == "error" and unknown.value.body["error"]["type"] == "not_found_error"
        with pytest.raises(anthropic.BadRequestError) as bad:
            await client.messages.create(model=MODEL, max_tokens=0, messages=conversation(1))
        assert bad.value.body["error"]["type"] == "invalid_request_error"
        async with aiohttp.ClientSession() as session:  # no max_tokens: the Messages API requires it
            async with session.post(url + "/v1/messages", json={"model": MODEL, "messages": conversation(1)}) as response:
                assert response.status == 400
                assert (await response.json())["error"] == {"type": "invalid_request_error",
                                                            "message": "'max_tokens' is required"}


async def test_an_anthropic_conversation_and_its_openai_form_land_on_the_same_instance() -> None:
    async with emulators(3) as servers, gateway([s.url for s in servers], router="dualmap") as url:
        chat = openai.AsyncOpenAI(base_url=url + "/v1", api_key="test-key", max_retries=0, timeout=30)
        places = set()
        for topic in range(6):
            first = await claude(url).messages.with_raw_response.create(
                model=MODEL, max_tokens=4, system=[{"type": "text", "text": f"Shop {topic}. "}, {"type": "text", "text": SYSTEM}],
                messages=conversation(topic))
            second = await chat.chat.completions.with_raw_response.create(model=MODEL, max_tokens=4, messages=as_chat(topic))
            assert second.headers["x-fleetgate-instance"] == first.headers["x-fleetgate-instance"]
            places.add(first.headers["x-fleetgate-instance"])
            cached_first = (await first.parse()).usage.cache_read_input_tokens
            # the instance had the whole prompt cached from the first: more than the template's shared head
            assert second.parse().usage.prompt_tokens_details.cached_tokens > cached_first + 64
        assert len(places) > 1  # the conversations spread: the instance follows the prompt, not one fixed choice


@contextlib.asynccontextmanager
async def cached_gateway(tmp_path: Path) -> AsyncIterator[str]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(ACCOUNTS_CACHE_POLICY)
    with RedisServer() as redis:
        async with emulators(1) as servers, gateway([servers[0].url], policy=str(policy), redis_url=redis.url,
                                                    redis_timeout_s=2.0) as url:
            yield url


async def test_a_cache_hit_is_replayed_as_a_message_and_as_its_typed_events(tmp_path: Path) -> None:
    async with cached_gateway(tmp_path) as url:
        client = claude(url)

        def ask(text: str) -> dict[str, Any]:
            return {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": text}]}

        first = await client.messages.with_raw_response.create(**ask("How do I reset my password?"))
        assert first.headers["x-fleetgate-cache"] == "miss"
        answer = await first.parse()
        hit = await client.messages.with_raw_response.create(**ask("I forgot my password, how can I change it?"))
        assert hit.headers["x-fleetgate-route"] == "cache-hit"
        replayed = await hit.parse()
        assert replayed.content[0].text == answer.content[0].text and replayed.stop_reason == answer.stop_reason
        assert replayed.usage.output_tokens == answer.usage.output_tokens

        async with client.messages.stream(**ask("I forgot my password, how can I change it?")) as stream:
            kinds = [event.type async for event in stream]
            streamed = await stream.get_final_message()
        assert kinds[:2] == ["message_start", "content_block_start"] and kinds[-3:] == [
            "content_block_stop", "message_delta", "message_stop"]
        assert streamed.content[0].text == answer.content[0].text
        assert streamed.usage.output_tokens == answer.usage.output_tokens
