"""Hostile clients against the bare gateway in front of emulated vLLM: deep JSON, odd request ids,
slow and vanishing uploads, huge headers and a streaming client that never reads. Each case ends
in an OpenAI-style 4xx or a counted, quiet disconnect: never a 500, a traceback or a held worker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import orjson
import pytest
import uvicorn
from support.gateway import ACCOUNTS_CACHE_POLICY, MODEL, emulators, eventually, gateway
from support.servers import free_port
from support.slow_clients import raw_connection, send_and_never_read, trickled_body_answer

from fleetgate.app.commands.serve import listener_config
from fleetgate.app.compose import build_asgi_app
from fleetgate.app.settings import GatewaySettings, ServeCommandSettings

pytestmark = pytest.mark.integration


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


async def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=body, headers={"Content-Type": "application/json", **(headers or {})}) as r:
            return r.status, r.headers.copy(), await r.json(content_type=None)


def metric(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def metrics(url: str) -> str:
    async with aiohttp.ClientSession() as session:
        return await (await session.get(url + "/metrics")).text()


async def test_deep_nesting_is_a_400_naming_the_field(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(ACCOUNTS_CACHE_POLICY)
    deep_tools = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                  "tools": [{"type": "function", "function": {"name": "f", "parameters": nested(300)}}]}
    deep_parts = {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": nested(300)}]}]}
    deep_calls = {"model": MODEL, "messages": [{"role": "assistant", "content": "", "tool_calls": nested(300)}]}
    async with emulators(1) as servers, gateway([s.url for s in servers], policy=str(policy)) as url:
        for body, field in ((deep_tools, "tools"), (deep_parts, "messages"), (deep_calls, "messages")):
            for path in ("/v1/chat/completions", "/admin/explain"):
                status, _, answer = await post(url + path, json.dumps(body).encode())  # orjson dumps 255 levels at most
                assert status == 400, (path, answer)
                assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["param"] == field
        assert metric(await metrics(url), "fleetgate_internal_errors_total") == 0


async def test_request_id_is_bounded_and_sanitised() -> None:
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    async with emulators(1) as servers, gateway([s.url for s in servers]) as url:
        for hostile in ("a" * 1000, "bad id\u00e9", "x;rm -rf", ""):
            status, headers, _ = await post(url + "/v1/chat/completions", body, {"x-request-id": hostile})
            assert status == 200 and re.fullmatch(r"[0-9a-f]{32}", headers.get("x-request-id", "")), (hostile, headers)
        status, headers, _ = await post(url + "/v1/chat/completions", body, {"x-request-id": "req-42.a:b_c"})
        assert headers["x-request-id"] == "req-42.a:b_c"


async def test_client_gone_mid_upload_is_counted_quietly(caplog: pytest.LogCaptureFixture) -> None:
    async with emulators(1) as servers, gateway([s.url for s in servers]) as url:
        loop = asyncio.get_running_loop()
        for _ in range(3):
            sock = raw_connection(url)
            await loop.sock_sendall(sock, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                          b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"mod")
            await asyncio.sleep(0.05)
            sock.close()
        series = 'fleetgate_rejected_requests_total{code="client_disconnected"}'
        text = ""

        async def counted() -> bool:
            nonlocal text
            text = await metrics(url)
            return metric(text, series) == 3

        for _ in range(200):
            if await counted():
                break
            await asyncio.sleep(0.05)
        assert metric(text, series) == 3
        assert metric(text, "fleetgate_internal_errors_total") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("fleetgate")]


async def test_internal_errors_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    async with emulators(1) as servers, gateway([s.url for s in servers]) as url:
        from fleetgate.router.gateway import Gateway

        def broken(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError("a bug")

        monkeypatch.setattr(Gateway, "handle", broken)
        status, _, answer = await post(url + "/v1/chat/completions", body)
        assert status == 500 and answer["error"]["type"] == "internal_error"
        assert metric(await metrics(url), "fleetgate_internal_errors_total") == 1


async def test_slowloris_body_gets_408_and_frees_the_worker() -> None:
    async with emulators(1) as servers, gateway([s.url for s in servers], body_read_timeout_s=1.0) as url:
        answer = await trickled_body_answer(url)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert b'"code":"request_timeout"' in answer


async def test_streaming_client_that_never_reads_ends_the_upstream_request() -> None:
    """More tokens than the socket buffers hold (the client's receive buffer is kept small): the
    gateway's write waits, and past send_timeout_s the stream ends and the instance stops generating."""
    requested = 60_000  # ~40 MB of SSE: far more than the socket buffers on the way hold (~10 MB)
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True,
                         "max_tokens": requested, "ignore_eos": True})
    async with (emulators(1, time_scale=0.02, max_model_len=2 * requested) as servers,
                gateway([s.url for s in servers], send_timeout_s=1.0) as url):
        sock = await send_and_never_read(url, body)
        try:
            stats = servers[0].engine.stats
            await eventually(lambda: stats().generation_tokens_total > 0 and stats().running == 0, 60,
                             "generation ended")
            assert stats().generation_tokens_total < requested  # aborted, with the client still connected
            text = await metrics(url)
            assert re.search(r"^fleetgate_requests_in_flight\{[^}]*\} 0\.0$", text, re.MULTILINE)
        finally:
            sock.close()


@contextlib.asynccontextmanager
async def bare_listener(servers: list[Any], **limits: Any) -> AsyncIterator[str]:
    """The bare server as `fleetgate serve --bare` configures it (listener limits included)."""
    settings = ServeCommandSettings(worker_urls=tuple(s.url for s in servers), model=MODEL, port=free_port(), **limits)
    server = uvicorn.Server(listener_config(build_asgi_app(settings.narrowed(GatewaySettings)),
                                            settings))
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started or task.done(), 10, "uvicorn started")
    try:
        yield f"http://127.0.0.1:{settings.port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def test_listener_refuses_huge_headers_and_caps_connections() -> None:
    async with emulators(1) as servers, bare_listener(servers, max_header_bytes=8192, max_connections=4) as url:
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/health", headers={"x-big": "a" * 100_000}) as response:
                assert response.status == 431
                assert (await response.json())["error"]["code"] == "request_header_fields_too_large"
                assert response.headers["connection"] == "close"  # refused by the parser, before the app saw it
            async with session.get(url + "/health") as response:
                assert response.status == 200
        loop = asyncio.get_running_loop()
        idle = [raw_connection(url) for _ in range(4)]
        try:
            sock = raw_connection(url)
            await loop.sock_sendall(sock, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
            sock.close()
            assert answer.startswith(b"HTTP/1.1 503"), answer[:100]
        finally:
            for s in idle:
                s.close()
