"""Outlier ejection, half-open trials, Retry-After back-off, latency outliers and the retry budget, through
the real gateway (bare ASGI on uvicorn) in front of emulated vLLM instances, driven by the official openai
client. Judged by the gateway's own counters and headers, never by timing."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.gateway import MODEL, emulators, eventually, gateway

pytestmark = pytest.mark.integration

CHAT = [{"role": "user", "content": "Write a haiku about routers."}]


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="test-key", max_retries=0, timeout=30)


async def set_fault(url: str, mode: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/admin/fault", data=orjson.dumps({"mode": mode})) as response:
            assert response.status == 200, await response.text()


class Metrics:
    """The gateway's /metrics, read on demand: `value(series, **labels)` sums the matching samples."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list = []

    async def read(self) -> "Metrics":
        async with aiohttp.ClientSession() as session:
            text = await (await session.get(self.url + "/metrics")).text()
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
        return self

    def value(self, series: str, **labels: str) -> float:
        return sum(s.value for s in self.samples
                   if s.name == series and all(s.labels.get(k) == v for k, v in labels.items()))


async def chat(c: openai.AsyncOpenAI, *, stream: bool = False) -> str:
    """One request; returns the instance that served it."""
    raw = await c.chat.completions.with_raw_response.create(model=MODEL, messages=CHAT, max_tokens=2, stream=stream)
    if stream:
        async for _ in raw.parse():
            pass
    return raw.headers["x-fleetgate-instance"]


async def test_one_failure_does_not_eject_consecutive_ones_do_and_half_open_lets_one_request_through() -> None:
    async with emulators(2) as servers, gateway([s.url for s in servers], first_byte_timeout_s=0.3,
                                                 nonstream_timeout_s=0.3, outlier_consecutive_failures=3,
                                                 eject_cooldown_s=0.5, probe_interval_s=0.1) as url:
        await set_fault(servers[0].url, "hang")  # health stays 200: only passive health can see it
        c, m = client(url), Metrics(url)
        timeouts_at_ejection = None
        for _ in range(12):
            assert await chat(c) == "default-1", "every request is retried on the healthy instance"
            await m.read()
            timeouts = m.value("fleetgate_upstream_errors_total", instance="default-0", kind="timeout")
            ejected = m.value("fleetgate_outlier_ejections_total", instance="default-0")
            if timeouts < 3:
                assert not ejected and m.value("fleetgate_instance_up", instance="default-0") == 1
            elif ejected:
                timeouts_at_ejection = timeouts
                break
        assert timeouts_at_ejection == 3
        assert m.value("fleetgate_outlier_ejections_total", instance="default-0", reason="consecutive-failures") == 1
        assert m.value("fleetgate_instance_up", instance="default-0") == 0

        async def readmitted() -> bool:
            return (await m.read()).value("fleetgate_instance_up", instance="default-0") == 1

        for _ in range(100):  # the probe re-admits it (half-open) once the ejection is over; still hanging
            if await readmitted():
                break
            await asyncio.sleep(0.05)
        assert await readmitted()
        served = await asyncio.gather(*(chat(c, stream=True) for _ in range(6)))
        assert served == ["default-1"] * 6
        await m.read()
        assert m.value("fleetgate_upstream_errors_total", instance="default-0", kind="timeout") == 4, \
            "exactly one trial request went to the half-open instance"
        assert m.value("fleetgate_half_open_probes_total", instance="default-0", outcome="failure") == 1
        assert m.value("fleetgate_outlier_ejections_total", instance="default-0", reason="half-open-failure") == 1

        await set_fault(servers[0].url, "ok")  # recovered: the next trial succeeds and closes it
        for _ in range(40):
            await chat(c)
            if (await m.read()).value("fleetgate_half_open_probes_total", outcome="success"):
                break
            await asyncio.sleep(0.05)
        assert m.value("fleetgate_half_open_probes_total", instance="default-0", outcome="success") == 1
        assert {await chat(c) for _ in range(4)} == {"default-0", "default-1"}, "closed: back in rotation"


async def test_an_instance_answering_503_retry_after_is_left_alone_and_the_other_serves() -> None:
    async with emulators(2) as servers, gateway([s.url for s in servers], probe_interval_s=0.1) as url:
        await set_fault(servers[0].url, "retry-after:30")
        c, m = client(url), Metrics(url)
        routes = []
        for _ in range(8):
            raw = await c.chat.completions.with_raw_response.create(model=MODEL, messages=CHAT, max_tokens=2)
            assert raw.headers["x-fleetgate-instance"] == "default-1"
            routes.append(raw.headers["x-fleetgate-route"])
        assert routes.count("rotation+backoff+retry") == 1 and routes.count("rotation") == 7
        await m.read()
        assert m.value("fleetgate_instance_backoffs_total", instance="default-0") == 1, "asked once, then avoided"
        assert m.value("fleetgate_retries_total", reason="busy") == 1
        assert m.value("fleetgate_instance_up", instance="default-0") == 0
        assert not m.value("fleetgate_outlier_ejections_total"), "a back-off is not a failure"


async def test_with_no_other_instance_the_503_and_its_retry_after_reach_the_client() -> None:
    async with emulators(1) as servers, gateway([servers[0].url], probe_interval_s=0.1) as url:
        await set_fault(servers[0].url, "retry-after:7")
        with pytest.raises(openai.InternalServerError) as busy:
            await client(url).chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2)
        assert busy.value.status_code == 503 and busy.value.response.headers["retry-after"] == "7"
        assert busy.value.body["code"] == "upstream_busy"


async def test_a_slowed_instance_is_ejected_as_a_latency_outlier() -> None:
    async with emulators(3, time_scale=1.0) as servers, gateway(
            [s.url for s in servers], outlier_latency_min_samples=5, outlier_latency_factor=3.0,
            outlier_latency_floor_ms=0, probe_interval_s=30) as url:
        c, m = client(url), Metrics(url)
        for _ in range(18):  # all normal: no outlier
            await chat(c, stream=True)
        assert not (await m.read()).value("fleetgate_outlier_ejections_total")
        await set_fault(servers[0].url, "slow:10")
        for _ in range(30):
            await chat(c, stream=True)
            if (await m.read()).value("fleetgate_outlier_ejections_total"):
                break
        assert m.value("fleetgate_outlier_ejections_total", instance="default-0", reason="latency") == 1
        assert m.value("fleetgate_outlier_ejections_total") == 1, "only the slow one"
        assert {await chat(c, stream=True) for _ in range(6)} <= {"default-1", "default-2"}


async def test_the_retry_budget_caps_retries() -> None:
    async with emulators(2) as servers, gateway([s.url for s in servers], probe_interval_s=30,
                                                 outlier_consecutive_failures=100, retry_budget_ratio=0.0,
                                                 retry_budget_window_s=60, retry_budget_min_per_s=0.05) as url:
        await set_fault(servers[0].url, "500")  # no probes (30 s) and a high threshold: it stays in rotation
        c, m = client(url), Metrics(url)
        failed = 0
        for _ in range(10):
            try:
                await chat(c)
            except openai.APIStatusError as error:
                assert error.status_code == 502
                failed += 1
        await m.read()
        assert m.value("fleetgate_retries_total", reason="5xx") == 3, "the floor: 0.05/s over 60 s"
        assert m.value("fleetgate_retries_withheld_total", reason="budget") == failed >= 1


async def test_a_chat_the_instance_may_have_acted_on_is_not_retried() -> None:
    async with emulators(2) as servers, gateway([s.url for s in servers], probe_interval_s=30) as url:
        await set_fault(servers[0].url, "reset")  # closes the connection after the body was written and run
        c, m = client(url), Metrics(url)
        outcomes = []
        for _ in range(2):
            try:
                outcomes.append(await chat(c))
            except openai.APIStatusError as error:
                outcomes.append(error.status_code)
        assert sorted(outcomes, key=str) == [502, "default-1"]
        await m.read()
        assert m.value("fleetgate_retries_withheld_total", reason="not-idempotent") == 1
        assert not m.value("fleetgate_retries_total")


async def test_a_stream_whose_connection_broke_before_its_first_byte_is_sent_elsewhere() -> None:
    """An instance killed while prefilling: the connection breaks after the body, before any byte. A streamed chat
    is then retried (no byte reached the client; the instance aborts on the closed connection), as
    `fleetgate bench chaos`'s instance-killed scenario needs."""
    from aiohttp import web
    from support.servers import serve_aiohttp

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({})

    async def breaks(request: web.Request) -> web.Response:
        await request.read()
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", breaks)
    async with serve_aiohttp(app) as breaker, emulators(1) as servers, \
            gateway([breaker, servers[0].url], probe_interval_s=30) as url:
        c, m = client(url), Metrics(url)
        served = [await chat(c, stream=True) for _ in range(2)]  # round robin: one of them tries the breaker first
        assert served == ["default-1", "default-1"]
        await m.read()
        assert m.value("fleetgate_retries_total", reason="broken") == 1
        assert not m.value("fleetgate_retries_withheld_total")
