"""The emulator's LoRA slots: --max-loras, LRU unloading, vLLM's refusals, and vllm:lora_requests_info."""

from __future__ import annotations

import asyncio

import pytest

from fleetgate.pools.emulator.lora import LoraError, LoraSlots
from fleetgate.pools.emulator.server import EmulatorServer
from fleetgate.pools.scrape import parse_vllm_metrics


async def test_loading_into_full_slots_unloads_the_least_recently_used() -> None:
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)

    slots = LoraSlots(2, load_s=0.5, modules={"a": "/a"}, sleep=sleep)
    await slots.load("b", "/b")
    slots.started("a")  # a is now used more recently than b
    slots.finished("a")
    await slots.load("c", "/c")
    assert slots.loaded() == {"a": "/a", "c": "/c"} and (slots.loads, slots.unloads) == (2, 1)
    assert waited == [0.5, 0.5]  # each runtime load takes its load time; start-up modules do not
    with pytest.raises(LoraError, match="already been loaded") as again:
        await slots.load("a", "/a")
    assert again.value.status == 400
    with pytest.raises(LoraError) as missing:
        slots.unload("b")
    assert missing.value.status == 404


def test_the_metric_names_running_adapters_as_vllm_does_and_the_gateway_reads_them() -> None:
    async def scrape() -> str:
        server = EmulatorServer("h100", "base", max_loras=3, lora_modules={"x": "/x", "y": "/y"})
        assert server.lora is not None
        server.lora.started("x")
        server.lora.started("y")
        return server.metrics.render().decode()

    text = asyncio.run(scrape())
    line = next(line for line in text.splitlines() if line.startswith("vllm:lora_requests_info{"))
    assert 'max_lora="3"' in line and 'running_lora_adapters="x,y"' in line and 'waiting_lora_adapters=""' in line
    assert parse_vllm_metrics(text).lora_adapters == {"x", "y"}
    assert parse_vllm_metrics('vllm:lora_requests_info{max_lora="1",running_lora_adapters="",'
                              'waiting_lora_adapters="q"} 1.7e9\n').lora_adapters == {"q"}
