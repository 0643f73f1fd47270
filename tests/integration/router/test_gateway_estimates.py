"""TTFT estimates through the real gateway: the estimate header, the estimate-error histogram, the
replay's estimate-error summary, and routers seeing the KV capacity instances report."""

from __future__ import annotations

import asyncio
from typing import ClassVar, Sequence

import aiohttp
import openai
import pytest
from support.gateway import MODEL, emulators, gateway

from fleetgate.loadgen.replay import ReplayConfig, Replayer, make_session, schedule
from fleetgate.loadgen.report import summarize
from fleetgate.loadgen.traces import TraceRequest
from fleetgate.router.routing.base import InstanceView, RouteDecision, RouteRequest
from fleetgate.router.routing.baselines import RoundRobin
from fleetgate.router.routing.registry import make_router

pytestmark = pytest.mark.integration

CHAT = [{"role": "user", "content": "Estimate me."}]
HEADER = "x-fleetgate-estimated-ttft-ms"


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="test-key", max_retries=0, timeout=30)


async def error_count(url: str) -> float:
    async with aiohttp.ClientSession() as session:
        text = await (await session.get(url + "/metrics")).text()
    for line in text.splitlines():
        if line.startswith('fleetgate_ttft_estimate_error_seconds_count{pool="default"}'):
            return float(line.split()[-1])
    return 0.0


async def test_streams_get_an_estimate_header_and_feed_the_error_histogram() -> None:
    async with emulators(2) as servers, gateway([s.url for s in servers], router="dualmap") as url:
        c = client(url)
        for n in range(3):
            raw = await c.chat.completions.with_raw_response.create(model=MODEL, messages=CHAT, max_tokens=4, stream=True)
            assert float(raw.headers[HEADER]) > 0
            _ = [chunk async for chunk in raw.parse()]
            assert await error_count(url) == n + 1
        plain = await c.chat.completions.with_raw_response.create(model=MODEL, messages=CHAT, max_tokens=4)
        assert HEADER not in plain.headers  # a non-streamed answer has no first token to compare
        assert await error_count(url) == 3


async def test_routers_without_estimates_send_no_header() -> None:
    async with emulators(1) as servers, gateway([s.url for s in servers]) as url:  # round-robin
        raw = await client(url).chat.completions.with_raw_response.create(model=MODEL, messages=CHAT, max_tokens=2,
                                                                          stream=True)
        _ = [chunk async for chunk in raw.parse()]
        assert HEADER not in raw.headers and await error_count(url) == 0


async def test_replay_summary_reports_the_estimate_error() -> None:
    trace = [TraceRequest(i * 0.05, None, ({"role": "user", "content": f"question {i} " * 10},), 3, None, 30)
             for i in range(6)]
    async with emulators(2) as servers, gateway([s.url for s in servers], router="dualmap") as url:
        config = ReplayConfig(target=url, model=MODEL, request_timeout_s=20.0)
        async with make_session(config) as session:
            results = await asyncio.wait_for(Replayer(config, session).run(schedule(trace, config)), timeout=30)
    assert all(r.error is None and r.estimated_ttft_ms is not None for r in results)
    error = summarize(results, ttft_slo_ms=2000)["ttft_estimate_error_ms"]
    assert error["requests"] == 6 and 0 <= error["p50"] <= error["p90"]


class CapacitySpy(RoundRobin):
    """Round-robin that remembers the KV capacity of the profiles it was shown."""

    seen: ClassVar[list[int]] = []

    def route(self, request: RouteRequest, instances: Sequence[InstanceView], now_s: float) -> RouteDecision:
        CapacitySpy.seen.append(instances[0].profile.kv_cache_tokens)
        return super().route(request, instances, now_s)


async def test_routers_see_the_kv_capacity_instances_report() -> None:
    def factory(name: str, **params: object) -> object:
        return CapacitySpy() if name == "round-robin" else make_router(name, **params)

    CapacitySpy.seen = []
    async with emulators(1, kv_cache_tokens=4096) as servers, gateway([s.url for s in servers], factory) as url:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):  # bounded poll: the registry scrapes every 0.2 s
                fleet = await (await session.get(url + "/admin/fleet")).json()
                if fleet["pools"]["default"][0]["kv_cache_tokens"] == 4096:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail(f"the scraped KV capacity never showed: {fleet}")
        await client(url).chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2)
    assert CapacitySpy.seen == [4096]  # the scraped capacity, not the h100 profile's
