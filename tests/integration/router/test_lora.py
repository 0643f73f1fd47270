"""LoRA adapters through the bare gateway with the official openai client, on a three-instance pool of
emulated vLLM (two adapter slots each, runtime loading on): holders are preferred, concurrent first
requests for an adapter trigger exactly one load, an adapter the instance unloaded (LRU) is loaded again
when asked for, and an unknown adapter is a 404 in OpenAI's shape."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import openai
import pytest
from support.gateway import MODEL, gateway

from fleetgate.pools.emulator.server import EmulatorServer

pytestmark = pytest.mark.integration

ADAPTERS = {"sql-lora": "/adapters/sql", "chat-lora": "/adapters/chat", "extra-a": "/adapters/a", "extra-b": "/adapters/b"}


@contextlib.asynccontextmanager
async def lora_fleet(tmp_path: Path) -> AsyncIterator[tuple[str, list[EmulatorServer]]]:
    """Three instances with two adapter slots; sql-lora is loaded on chat-1 from the start."""
    servers = [EmulatorServer("h100", MODEL, time_scale=0.02, max_loras=2, lora_load_s=0.5,
                              lora_modules={"sql-lora": ADAPTERS["sql-lora"]} if i == 1 else None) for i in range(3)]
    for server in servers:
        await server.start()
    adapters = ", ".join(f"{name}: {path}" for name, path in ADAPTERS.items())
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(f"""pools:
  - name: chat
    model: {MODEL}
    lora_adapters: {{{adapters}}}
    runtime_lora_loading: true
    instances: [{', '.join(f'{{url: "{s.url}"}}' for s in servers)}]
""")
    try:
        async with gateway([], fleet=str(fleet), worker_urls=(), model=None, router="dualmap") as url:
            yield url, servers
    finally:
        for server in servers:
            await server.stop()


async def holders(url: str, adapter: str) -> set[str]:
    async with aiohttp.ClientSession() as session, session.get(url + "/admin/fleet") as response:
        pools = (await response.json())["pools"]
    return {i["name"] for i in pools["chat"] if adapter in i["adapters"]}


async def until_holders(url: str, adapter: str, expected: set[str]) -> None:
    for _ in range(500):  # bounded: the registry probes every 0.2 s
        if await holders(url, adapter) == expected:
            return
        await asyncio.sleep(0.01)
    assert await holders(url, adapter) == expected


async def ask(url: str, model: str, text: str) -> tuple[str, Any]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="test-key", max_retries=0, timeout=30)
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=4)
    return raw.headers["x-fleetgate-instance"], raw.parse()


def loads(servers: list[EmulatorServer]) -> int:
    return sum(s.lora.loads for s in servers if s.lora is not None)


async def test_holders_are_preferred_first_requests_load_once_and_an_evicted_adapter_is_loaded_again(tmp_path: Path) -> None:
    async with lora_fleet(tmp_path) as (url, servers):
        await until_holders(url, "sql-lora", {"chat-1"})  # learnt from chat-1's /v1/models

        questions = [f"Write a query for table number {i}." for i in range(8)]
        base = {(await ask(url, MODEL, q))[0] for q in questions}
        assert len(base) > 1  # the base model's prompts spread over the pool ...
        for q in questions:  # ... the adapter's go to the instance that holds it
            place, answer = await ask(url, "sql-lora", q)
            assert place == "chat-1" and answer.model == "sql-lora"
        assert loads(servers) == 0

        # five concurrent first requests for an adapter nobody holds: one load, and all served where it went
        places = await asyncio.gather(*(ask(url, "chat-lora", f"Say hello to guest {i}.") for i in range(5)))
        assert loads(servers) == 1
        [holder] = {place for place, _ in places}
        assert all(answer.model == "chat-lora" for _, answer in places)
        await until_holders(url, "chat-lora", {holder})

        # the holder loads two other adapters itself: with two slots, chat-lora (least recently used) is unloaded
        server = servers[int(holder.rsplit("-", 1)[1])]
        async with aiohttp.ClientSession() as session:
            for name in ("extra-a", "extra-b"):
                async with session.post(server.url + "/v1/load_lora_adapter",
                                        json={"lora_name": name, "lora_path": ADAPTERS[name]}) as response:
                    assert response.status == 200
        assert server.lora is not None and not server.lora.has("chat-lora")
        before = loads(servers)
        _, answer = await ask(url, "chat-lora", "Say hello to guest 0.")
        assert answer.model == "chat-lora" and loads(servers) == before + 1


async def test_an_unknown_adapter_is_a_404_in_openai_shape(tmp_path: Path) -> None:
    async with lora_fleet(tmp_path) as (url, servers):
        with pytest.raises(openai.NotFoundError) as unknown:
            await ask(url, "no-such-lora", "hello")
        assert unknown.value.body["code"] == "model_not_found" and unknown.value.body["type"] == "invalid_request_error"
        assert loads(servers) == 0
