"""/ready (whether to send this gateway requests) apart from /health (whether it runs), and the
graceful drain: a stream in flight when the gateway starts draining runs to its end."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import aiohttp
import openai
import pytest
import uvicorn
from support.gateway import MODEL, emulators, eventually
from support.servers import free_port, serve_asgi

from fleetgate.app.api import create_app
from fleetgate.app.compose import Runtime, build_asgi_app
from fleetgate.app.drain import DrainingServer
from fleetgate.app.settings import GatewaySettings
from fleetgate.pools.emulator.server import EmulatorServer

pytestmark = pytest.mark.integration

CHAT = [{"role": "user", "content": "Tell me a long story."}]


async def get(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def test_ready_is_503_while_no_instance_of_a_served_model_is_healthy() -> None:
    async with emulators(1) as (server,):
        runtime = Runtime(GatewaySettings(worker_urls=(server.url,), model=MODEL, probe_interval_s=0.05))
        async with serve_asgi(create_app(runtime)) as url:
            assert await get(url + "/ready") == (200, {"status": "ready"})
            await server.stop()
            await eventually(lambda: not runtime.registry.snapshot.healthy("default"), what="the instance down")
            assert await get(url + "/ready") == (503, {"status": "unavailable",
                                                       "models_without_healthy_instance": [MODEL]})
            assert (await get(url + "/health"))[0] == 200  # it runs: not a reason to restart it


async def test_a_stream_in_flight_when_draining_starts_finishes_while_ready_says_503() -> None:
    server = EmulatorServer("h100", MODEL, time_scale=1.0)  # ~2 s for the stream below
    await server.start()
    try:
        runtime = Runtime(GatewaySettings(worker_urls=(server.url,), model=MODEL, graceful_shutdown_timeout_s=30))
        async with serve_asgi(create_app(runtime)) as url:
            api = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
            stream = await api.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=150, stream=True)
            chunks = [await stream.__anext__()]

            drained = asyncio.create_task(runtime.drain.drain(runtime.settings.graceful_shutdown_timeout_s))
            await eventually(lambda: runtime.drain.draining, what="draining")
            assert await get(url + "/ready") == (503, {"status": "draining"})
            assert not drained.done()  # the stream is still in flight

            chunks += [chunk async for chunk in stream]
            assert await asyncio.wait_for(drained, 10) is True
            direct = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
            expected = await direct.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=150)
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
                expected.choices[0].message.content
            assert chunks[-1].choices[0].finish_reason == "length"
    finally:
        await server.stop()


async def test_draining_gives_up_after_its_timeout() -> None:
    server = EmulatorServer("h100", MODEL, time_scale=1.0)
    await server.start()
    try:
        runtime = Runtime(GatewaySettings(worker_urls=(server.url,), model=MODEL))
        async with serve_asgi(create_app(runtime)) as url:
            api = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
            stream = await api.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2000, stream=True)
            await stream.__anext__()
            assert await runtime.drain.drain(0.2) is False  # bounded: the stream is far from its end
            await stream.close()
    finally:
        await server.stop()


async def test_the_bare_server_drains_on_sigterm_then_stops() -> None:
    server = EmulatorServer("h100", MODEL, time_scale=1.0)
    await server.start()
    try:
        app = build_asgi_app(GatewaySettings(worker_urls=(server.url,), model=MODEL))
        port = free_port()
        bare = DrainingServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"),
                              app.state.drain, timeout_s=30)
        bare.capture_signals = contextlib.nullcontext  # type: ignore[method-assign] # the test signals it itself
        serving = asyncio.create_task(bare.serve())
        await eventually(lambda: bare.started, what="uvicorn started")
        url = f"http://127.0.0.1:{port}"
        api = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        stream = await api.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=150, stream=True)
        chunks = [await stream.__anext__()]

        bare.handle_exit(signal.SIGTERM, None)  # what uvicorn's SIGTERM handler calls
        assert await get(url + "/ready") == (503, {"status": "draining"})  # still answering: not stopped yet
        assert not serving.done()
        chunks += [chunk async for chunk in stream]
        assert chunks[-1].choices[0].finish_reason == "length"
        await asyncio.wait_for(serving, 15)  # drained, so it stopped by itself
    finally:
        await server.stop()
