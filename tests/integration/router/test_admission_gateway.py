"""Admission through the real gateway (bare app, emulated instances, the official openai client): with
a tiny queue and a fleet the router says is overloaded, low-priority requests get 429 or 503 with
Retry-After while high-priority ones complete, and every request ends one way or the other; a
streaming waiter whose client disconnects leaves the queue and is never sent.

The router's estimate is the one thing faked (a RoundRobin that reports whatever the test sets), so
"overloaded" is an event the test controls rather than a race against the emulators' speed."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Sequence

import aiohttp
import openai
import pytest
from support.gateway import MODEL, emulators, gateway

from fleetgate.router.ingress import tenant_of
from fleetgate.router.routing.base import InstanceView, RouteDecision, RouteRequest
from fleetgate.router.routing.baselines import RoundRobin

pytestmark = pytest.mark.integration

CHAT = [{"role": "user", "content": "Admit me."}]
HIGH_KEY, LOW_KEY, TIGHT_KEY = "key-interactive", "key-batch", "key-tight"


class Estimating(RoundRobin):
    estimate_s = 1000.0  # class-wide: the test turns the fleet's load up and down

    def route(self, request: RouteRequest, instances: Sequence[InstanceView], now_s: float) -> RouteDecision:
        decision = super().route(request, instances, now_s)
        return RouteDecision(decision.head, decision.reason, Estimating.estimate_s, decision.tail)


def policy(path: Path) -> str:
    def tenant(key: str) -> str:
        return tenant_of({"authorization": f"Bearer {key}"})

    path.write_text(f"""version: 1
rules:
  - name: interactive
    match: {{tenant: [{tenant(HIGH_KEY)}]}}
    ttft_slo_ms: 600000
    priority: 1
  - name: batch
    match: {{tenant: [{tenant(LOW_KEY)}]}}
    ttft_slo_ms: 600000
    priority: -1
  - name: tight
    match: {{tenant: [{tenant(TIGHT_KEY)}]}}
    ttft_slo_ms: 300
    priority: -1
defaults:
  router: round-robin
""")
    return str(path)


async def depth(url: str) -> float:
    async with aiohttp.ClientSession() as session:
        text = await (await session.get(url + "/metrics")).text()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("fleetgate_admission_queue_depth{"))


async def test_low_priority_is_shed_with_retry_after_while_high_priority_completes(tmp_path: Path) -> None:
    Estimating.estimate_s = 1000.0
    async with emulators(1) as servers, gateway(
            [s.url for s in servers], lambda name, **params: Estimating(), policy=policy(tmp_path / "p.yaml"),
            semantic_cache=False, admission=True, admission_queue_size=2, admission_recheck_s=0.02) as url:
        high, low, tight = (openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)
                            for key in (HIGH_KEY, LOW_KEY, TIGHT_KEY))

        def send(client: openai.AsyncOpenAI) -> asyncio.Task:
            return asyncio.ensure_future(client.chat.completions.with_raw_response.create(
                model=MODEL, messages=CHAT, max_tokens=3))

        async def until_depth(n: int) -> None:
            for _ in range(500):  # bounded poll until n wait (events, not a fixed sleep)
                if await depth(url) == n:
                    break
                await asyncio.sleep(0.02)
            assert await depth(url) == n

        low_old = send(low)
        await until_depth(1)  # queued before low_new: which is newer must not depend on two connections' race
        low_new = send(low)
        await until_depth(2)
        high_task = send(high)  # the queue is full: the newest low-priority waiter makes room
        with pytest.raises(openai.RateLimitError) as shed:
            await low_new
        assert shed.value.response.headers["retry-after"] == "1000"
        assert shed.value.body["code"] == "admission_queue_full"
        with pytest.raises(openai.RateLimitError):  # a newcomer ranking lowest is refused at once
            await low.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=3)
        assert not high_task.done() and not low_old.done()

        Estimating.estimate_s = 0.01  # capacity is back: the waiters go, highest class first
        high_done, low_done = await high_task, await low_old
        assert high_done.parse().usage.completion_tokens == 3 and low_done.parse().usage.completion_tokens == 3
        assert float(high_done.headers["x-fleetgate-queued-ms"]) > 0

        Estimating.estimate_s = 1000.0  # overloaded until the SLO (0.3 s) passes: 503
        with pytest.raises(openai.InternalServerError) as late:
            await tight.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=3)
        assert late.value.status_code == 503 and late.value.response.headers["retry-after"] == "1000"
        assert late.value.body["code"] == "fleet_overloaded"
        assert await depth(url) == 0

        async with aiohttp.ClientSession() as session:
            metrics = await (await session.get(url + "/metrics")).text()
        shed_lines = sorted(line for line in metrics.splitlines() if line.startswith("fleetgate_admission_shed_total{"))
        assert [line.split("{")[1] for line in shed_lines] == [
            'pools="default",priority="-1",reason="queue-full",status="429"} 2.0',
            'pools="default",priority="-1",reason="slo",status="503"} 1.0',
        ]
        # every request accounted for: 2 completed, 2 refused with 429, 1 with 503


async def gone_waiters(url: str) -> float:
    """Waiters that left the admission queue because their client went away."""
    async with aiohttp.ClientSession() as session:
        text = await (await session.get(url + "/metrics")).text()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("fleetgate_admission_wait_seconds_count{") and 'outcome="gone"' in line)


async def test_a_streaming_waiter_whose_client_disconnects_leaves_the_queue_unsent(tmp_path: Path) -> None:
    Estimating.estimate_s = 1000.0  # overloaded: the stream must wait in the queue
    async with emulators(1) as servers, gateway(
            [s.url for s in servers], lambda name, **params: Estimating(), policy=policy(tmp_path / "p.yaml"),
            semantic_cache=False, admission=True, admission_recheck_s=0.02) as url:
        body = {"model": MODEL, "messages": CHAT, "max_tokens": 3, "stream": True}
        async with aiohttp.ClientSession(headers={"authorization": f"Bearer {HIGH_KEY}"}) as client:
            waiting = asyncio.ensure_future(client.post(url + "/v1/chat/completions", json=body))
            for _ in range(500):  # bounded poll until it waits
                if await depth(url) == 1:
                    break
                await asyncio.sleep(0.02)
            assert await depth(url) == 1 and not waiting.done()
            waiting.cancel()  # the client gives up before any byte: aiohttp closes the connection
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
        for _ in range(500):  # bounded: the queue empties because the client left, not by a timeout
            if await gone_waiters(url) == 1:
                break
            await asyncio.sleep(0.02)
        assert await gone_waiters(url) == 1 and await depth(url) == 0

        Estimating.estimate_s = 0.01  # capacity is back: had the stream still waited, it would go now
        high = openai.AsyncOpenAI(base_url=url + "/v1", api_key=HIGH_KEY, max_retries=0, timeout=30)
        done = await high.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=3)
        assert done.usage is not None and done.usage.completion_tokens == 3
        stats = servers[0].stats()  # the emulator saw one request: the later one, never the stream
        assert (stats.finished_total, stats.running, stats.waiting) == (1, 0, 0)
