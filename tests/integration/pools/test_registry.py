"""Fleet registry against real HTTP servers on loopback: probes, scrapes, ejection, re-admission."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from fleetgate.core.clock import ManualClock
from fleetgate.pools.config import single_pool_fleet
from fleetgate.pools.registry import FleetRegistry, HealthPolicy

pytestmark = pytest.mark.integration


class FakeVllm:
    """A /health + /metrics responder whose health a test flips (only the probe side is under test)."""

    def __init__(self) -> None:
        self.healthy = True
        self.waiting = 0
        self.stalled = asyncio.Event()  # while set, /health never answers

    async def health(self, _request: web.Request) -> web.Response:
        while self.stalled.is_set():
            await asyncio.sleep(0.05)
        return web.Response(status=200 if self.healthy else 503)

    async def metrics(self, _request: web.Request) -> web.Response:
        return web.Response(text=f'vllm:num_requests_waiting{{model_name="m"}} {self.waiting}\n'
                                 'vllm:num_requests_running{model_name="m"} 2\n')

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        return app


@pytest.fixture
async def two_instances():
    fakes = [FakeVllm(), FakeVllm()]
    runners = []
    urls = []
    for fake in fakes:
        runner = web.AppRunner(fake.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}")  # noqa: SLF001
    yield fakes, urls
    for runner in runners:
        await runner.cleanup()


async def test_probe_scrape_eject_and_readmit(two_instances) -> None:  # noqa: ANN001
    fakes, urls = two_instances
    clock = ManualClock(100.0)
    registry = FleetRegistry(single_pool_fleet(urls, "m").to_pools(), clock=clock,
                             policy=HealthPolicy(probe_interval_s=0.5, probe_timeout_s=1.0, eject_cooldown_s=1.0))
    a, b = registry.endpoints
    async with aiohttp.ClientSession() as session:
        fakes[0].waiting = 7
        snapshot = await registry.refresh(session)
        assert snapshot.healthy("default") == (a, b)
        assert (snapshot.state(a).waiting, snapshot.state(a).running) == (7, 2)

        fakes[1].healthy = False  # active health: a failing /health removes it at the next probe
        assert (await registry.refresh(session)).healthy("default") == (a,)
        fakes[1].healthy = True
        assert (await registry.refresh(session)).healthy("default") == (a, b)

        version = registry.snapshot.version
        registry.report_failure(a, "refused")  # passive health: out at once, no probe needed
        assert registry.snapshot.healthy("default") == (b,) and registry.snapshot.version == version + 1
        clock.advance(0.5)
        assert (await registry.refresh(session)).healthy("default") == (b,), "still cooling down"
        clock.advance(0.6)
        assert (await registry.refresh(session)).healthy("default") == (a, b), "re-admitted after recovery"


async def test_only_a_run_of_timed_out_probes_marks_an_instance_down(two_instances) -> None:  # noqa: ANN001
    """One slow probe may be this gateway's own stalled loop (a soak run saw a replica mark every instance
    down at once for a second); a refused or failed probe still counts at once (the test above)."""
    fakes, urls = two_instances
    registry = FleetRegistry(single_pool_fleet(urls, "m").to_pools(),
                             policy=HealthPolicy(probe_interval_s=0.5, probe_timeout_s=0.2, eject_cooldown_s=1.0,
                                                 probe_timeouts_to_fail=3))
    a, b = registry.endpoints
    async with aiohttp.ClientSession() as session:
        assert (await registry.refresh(session)).healthy("default") == (a, b)
        fakes[1].stalled.set()
        assert (await registry.refresh(session)).healthy("default") == (a, b), "one timeout"
        assert (await registry.refresh(session)).healthy("default") == (a, b), "two timeouts"
        assert (await registry.refresh(session)).healthy("default") == (a,), "three in a row: down"
        fakes[1].stalled.clear()
        assert (await registry.refresh(session)).healthy("default") == (a, b)
        fakes[1].stalled.set()  # the run starts again after an answer
        assert (await registry.refresh(session)).healthy("default") == (a, b)
        fakes[1].stalled.clear()


async def test_unreachable_instance_is_unhealthy_not_an_error() -> None:
    registry = FleetRegistry(single_pool_fleet(["http://127.0.0.1:9"], "m").to_pools(),
                             policy=HealthPolicy(probe_interval_s=0.5, probe_timeout_s=0.5, eject_cooldown_s=1.0))
    async with aiohttp.ClientSession() as session:
        assert (await registry.refresh(session)).healthy("default") == ()
