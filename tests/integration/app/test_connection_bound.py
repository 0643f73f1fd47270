"""`upstream_connections_per_instance` bounds the connections the gateway holds open to one instance."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from support.gateway import MODEL, eventually, gateway
from support.servers import serve_aiohttp

pytestmark = pytest.mark.integration

COMPLETION = {"id": "cmpl-1", "object": "text_completion", "model": MODEL,
              "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}


async def _empty(_request: web.Request) -> web.Response:
    return web.Response()


class HeldInstance:
    """A vLLM stand-in that answers a completion only when the test releases it, and counts the
    completions in progress at once: each holds a connection of its own."""

    def __init__(self) -> None:
        self.in_progress = 0
        self.peak = 0
        self.unreleased: list[asyncio.Event] = []
        self.hold = True

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", _empty)
        app.router.add_get("/metrics", _empty)
        app.router.add_post("/v1/completions", self._completion)
        return app

    async def _completion(self, request: web.Request) -> web.Response:
        await request.read()
        release = asyncio.Event()
        if self.hold:
            self.unreleased.append(release)
        else:
            release.set()
        self.in_progress += 1
        self.peak = max(self.peak, self.in_progress)
        try:
            await release.wait()
        finally:
            self.in_progress -= 1
        return web.json_response(COMPLETION)

    def release_oldest(self) -> None:
        self.unreleased.pop(0).set()

    def release_all(self) -> None:
        """Answer everything now and from now on (a failed test then ends without waiting)."""
        self.hold = False
        while self.unreleased:
            self.release_oldest()


@pytest.mark.parametrize(("bound", "requests", "peak"), [(2, 5, 2), (8, 5, 5)])
async def test_connections_to_one_instance_stay_within_the_bound(bound: int, requests: int, peak: int) -> None:
    instance = HeldInstance()
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 1}
    async with serve_aiohttp(instance.app()) as url, \
            gateway([url], upstream_connections_per_instance=bound) as gateway_url, \
            aiohttp.ClientSession() as client:
        sent = [asyncio.create_task(client.post(gateway_url + "/v1/completions", json=body)) for _ in range(requests)]
        try:
            for remaining in range(requests, 0, -1):  # release one only once as many as allowed are held
                await eventually(lambda: len(instance.unreleased) == min(bound, remaining), timeout_s=10,
                                 what=f"{min(bound, remaining)} completions held at once")
                instance.release_oldest()
        finally:
            instance.release_all()
        answers = await asyncio.gather(*sent)
        assert [answer.status for answer in answers] == [200] * requests
    assert instance.peak == peak
