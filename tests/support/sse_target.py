"""A tiny OpenAI-style SSE server on 127.0.0.1 whose behaviour a test picks per request via `model`.

model "ok" streams `chunks` tokens after `delay_s`; "http-503" answers 503; "stream-error" sends an
SSE error event after one token; "cut" drops the connection mid-stream; "json" ignores stream=true.
Every request's receipt time (time.monotonic) and headers are recorded for the test to inspect.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator

from aiohttp import web

USAGE = {"prompt_tokens": 40, "completion_tokens": 3, "total_tokens": 43, "prompt_tokens_details": {"cached_tokens": 24}}
ROUTE_HEADERS = {"x-fleetgate-pool": "small", "x-fleetgate-instance": "small-0", "x-fleetgate-route": "dualmap"}


@dataclass
class SseTarget:
    url: str = ""
    delay_s: float = 0.0
    chunks: int = 3
    received_s: list[float] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    bodies: list[dict] = field(default_factory=list)


def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _app(target: SseTarget) -> web.Application:
    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "ok", "object": "model"}]})

    async def complete(request: web.Request) -> web.StreamResponse:
        target.received_s.append(time.monotonic())
        body = await request.json()
        target.headers.append(dict(request.headers))
        target.bodies.append(body)
        mode = body.get("model")
        if mode == "http-503":
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        await asyncio.sleep(target.delay_s)
        if mode == "json":
            return web.json_response({"choices": [{"message": {"content": "a b c"}}], "usage": USAGE})
        response = web.StreamResponse(headers={"content-type": "text/event-stream", **ROUTE_HEADERS})
        await response.prepare(request)
        for index in range(target.chunks):
            text_choice = {"index": 0, "delta": {"content": f"t{index} "}} if "chat" in request.path else {"index": 0, "text": "x"}
            await response.write(_event({"choices": [text_choice]}))
            if mode == "stream-error":
                await response.write(_event({"error": {"message": "engine died", "type": "internal_error"}}))
                return response
            if mode == "cut":
                request.transport.close()
                return response
        await response.write(_event({"choices": [], "usage": USAGE}))
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", complete)
    app.router.add_post("/v1/completions", complete)
    return app


@asynccontextmanager
async def run_sse_target(delay_s: float = 0.0, chunks: int = 3) -> AsyncIterator[SseTarget]:
    target = SseTarget(delay_s=delay_s, chunks=chunks)
    runner = web.AppRunner(_app(target), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    target.url = f"http://127.0.0.1:{port}"
    try:
        yield target
    finally:
        await runner.cleanup()
