"""`/v1/embeddings`, `/tokenize`, `/detokenize` and `/v1/responses` through the bare gateway with the official
openai client, in front of emulated vLLM: embeddings reach only the embedding model's pools and spread over
them, tokenize round-trips, responses stream and not, and a response that continues a stored one goes to
the instance that stores it, or gets a clear error when that instance is gone."""

from __future__ import annotations

import contextlib
import asyncio
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.gateway import MODEL, gateway

from fleetgate.pools.emulator.server import EmulatorServer

pytestmark = pytest.mark.integration

EMBED = "tiny-embed"


@contextlib.asynccontextmanager
async def mixed_fleet(tmp_path: Path) -> AsyncIterator[tuple[str, list[EmulatorServer], list[EmulatorServer]]]:
    """Two generating instances of MODEL and two of the embedding model EMBED, behind one gateway."""
    chat = [EmulatorServer("h100", MODEL, time_scale=0.02) for _ in range(2)]
    embed = [EmulatorServer("h100", EMBED, time_scale=0.02, serves="embed") for _ in range(2)]
    for server in chat + embed:
        await server.start()
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(f"""pools:
  - {{name: chat, model: {MODEL}, instances: [{', '.join(f'{{url: "{s.url}"}}' for s in chat)}]}}
  - {{name: vectors, model: {EMBED}, serves: embed, instances: [{', '.join(f'{{url: "{s.url}"}}' for s in embed)}]}}
""")
    try:
        async with gateway([], fleet=str(fleet), worker_urls=(), model=None, router="dualmap") as url:
            yield url, chat, embed
    finally:
        for server in chat + embed:
            await server.stop()


async def in_flight(session: aiohttp.ClientSession, url: str, instance: str) -> float:
    text = await (await session.get(url + "/metrics")).text()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "fleetgate_requests_in_flight" and s.labels.get("instance") == instance)


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="test-key", max_retries=0, timeout=30)


async def test_embeddings_go_to_the_embedding_pool_balanced_and_counted(tmp_path: Path) -> None:
    async with mixed_fleet(tmp_path) as (url, _chat, embed):
        direct = await client(embed[0].url).embeddings.create(model=EMBED, input=["red bike", "blue car"])
        via = await client(url).embeddings.create(model=EMBED, input=["red bike", "blue car"])  # base64 on the wire
        assert [d.embedding for d in via.data] == [d.embedding for d in direct.data]
        assert len(via.data[0].embedding) == 32 and via.usage.prompt_tokens == direct.usage.prompt_tokens

        async def place() -> str:
            raw = await client(url).embeddings.with_raw_response.create(model=EMBED, input="same text", encoding_format="float")
            assert raw.headers["x-fleetgate-pool"] == "vectors" and raw.headers["x-fleetgate-route"] == "least-loaded"
            return raw.headers["x-fleetgate-instance"]

        assert await place() == "vectors-0"  # idle instances: the first by name
        async with aiohttp.ClientSession() as session:
            await session.post(embed[0].url + "/admin/fault", json={"mode": "hang"})
            stuck = asyncio.ensure_future(place())  # held at vectors-0 ...
            for _ in range(500):  # bounded: until the gateway counts it in flight there
                if await in_flight(session, url, "vectors-0") == 1 or stuck.done():
                    break
                await asyncio.sleep(0.01)
            assert await in_flight(session, url, "vectors-0") == 1
            # ... so the same text (no prefix affinity) goes to the less loaded instance
            assert [await place() for _ in range(3)] == ["vectors-1"] * 3
            stuck.cancel()
            await session.post(embed[0].url + "/admin/fault", json={"mode": "ok"})

        with pytest.raises(openai.BadRequestError, match="does not serve /v1/embeddings"):
            await client(url).embeddings.create(model=MODEL, input="text")
        with pytest.raises(openai.NotFoundError):
            await client(url).embeddings.create(model="no-such-model", input="text")
        async with aiohttp.ClientSession() as session:
            text = await (await session.get(url + "/metrics")).text()
        prompt = sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                     if s.name == "fleetgate_prompt_tokens_total" and s.labels.get("pool") == "vectors")
        assert prompt == via.usage.prompt_tokens + 4 * 3  # "same text": 9 characters, 3 stand-in tokens


async def test_tokenize_and_detokenize_go_to_any_instance_of_the_model(tmp_path: Path) -> None:
    async with mixed_fleet(tmp_path) as (url, _chat, _embed), aiohttp.ClientSession() as session:
        for model in (MODEL, EMBED):
            async with session.post(url + "/tokenize", json={"model": model, "prompt": "Hello, fleet!"}) as response:
                assert response.status == 200
                tokenized = await response.json()
            assert tokenized["count"] == len(tokenized["tokens"]) == 4
            async with session.post(url + "/detokenize", json={"model": model, "tokens": tokenized["tokens"]}) as response:
                assert (await response.json())["prompt"] == "Hello, fleet!"
        async with session.post(url + "/tokenize", json={"model": MODEL}) as response:
            assert response.status == 400 and (await response.json())["error"]["param"] == "prompt"


async def test_responses_plain_streamed_and_continued_on_the_holder(tmp_path: Path) -> None:
    async with mixed_fleet(tmp_path) as (url, chat, _embed):
        gateway_client = client(url)
        first = await gateway_client.responses.with_raw_response.create(
            model=MODEL, input="Plan a ride along the coast.", instructions="Be brief.", max_output_tokens=8)
        answer = first.parse()
        holder = first.headers["x-fleetgate-instance"]
        assert answer.status == "incomplete" and len(answer.output_text.split()) == 8
        assert first.headers["x-fleetgate-cache"] == "bypass"

        stream = await gateway_client.responses.create(model=MODEL, input="Plan a ride along the coast.",
                                                       instructions="Be brief.", max_output_tokens=8, stream=True)
        events = [event async for event in stream]
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        assert events[-1].response.status == "incomplete"  # cut at max_output_tokens
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == answer.output_text

        for _ in range(3):  # wherever DualMap would send the new text, the follow-up goes where its history is
            follow = await gateway_client.responses.with_raw_response.create(
                model=MODEL, input="And back inland?", previous_response_id=answer.id, max_output_tokens=4)
            assert follow.headers["x-fleetgate-instance"] == holder
            assert follow.parse().usage.input_tokens > answer.usage.input_tokens  # the stored history was prepended

        await chat[int(holder.rsplit("-", 1)[1])].stop()  # pool "chat" names its instances chat-0, chat-1
        with pytest.raises(openai.NotFoundError) as missing:
            await gateway_client.responses.create(model=MODEL, input="Still there?", previous_response_id=answer.id)
        assert missing.value.body["code"] == "previous_response_not_found"
        with pytest.raises(openai.NotFoundError):
            await gateway_client.responses.create(model=MODEL, input="Hi", previous_response_id="resp_unknown")
