"""Start emulated vLLM instances and the bare gateway on 127.0.0.1 for integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, AsyncIterator, Callable

from fleetgate.app.compose import build_asgi_app
from fleetgate.app.settings import GatewaySettings
from fleetgate.pools.emulator.server import EmulatorServer
from fleetgate.router.routing.registry import make_router
from support.servers import serve_asgi

MODEL = "tiny-llama"


@contextlib.asynccontextmanager
async def emulators(count: int, *, time_scale: float = 0.02, **options: Any) -> AsyncIterator[list[EmulatorServer]]:
    servers = [EmulatorServer("h100", MODEL, time_scale=time_scale, **options) for _ in range(count)]
    for server in servers:
        await server.start()
    try:
        yield servers
    finally:
        for server in servers:
            await server.stop()


@contextlib.asynccontextmanager
async def gateway(urls: list[str], router_factory: Callable[..., Any] = make_router, **settings: Any) -> AsyncIterator[str]:
    """The bare ASGI gateway (uvicorn, this loop) in front of `urls`; yields its base URL."""
    defaults: dict[str, Any] = {"worker_urls": urls, "model": MODEL, "router": "round-robin",
                                "probe_interval_s": 0.2}
    app = build_asgi_app(GatewaySettings(**{**defaults, **settings}), router_factory)
    async with serve_asgi(app) as url:
        yield url


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    """Poll `condition` until it holds (bounded); tests never sleep a fixed time to wait."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout_s}s")
        await asyncio.sleep(0.02)


ACCOUNTS_CACHE_POLICY = """
version: 1
topic: {default_category: general}
categories:
  - name: accounts
    keywords: [password]
    cache: {enabled: true, threshold: 0.8, ttl_s: 3600}
  - name: general
    cache: {enabled: false}
"""
"""A policy that caches one category (requests that mention a password) and nothing else."""
