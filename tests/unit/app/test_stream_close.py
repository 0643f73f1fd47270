"""A streamed answer's generator is closed as soon as the client is gone, not when the garbage
collector gets to it: the gateway's relay closes the upstream request (and so aborts vLLM's
generation) only when its generator is closed. The test holds a reference to the generator, so
only an explicit close can run its `finally`."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncGenerator

from fleetgate.app.api import _to_http
from fleetgate.router.gateway import GatewayResponse


class Relay:
    """A stand-in for the gateway's relay: endless chunks, and whether its `finally` ran."""

    def __init__(self) -> None:
        self.closed = False

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        try:
            while True:
                yield b"data: {}\n\n"
        finally:
            self.closed = True


async def never_disconnects() -> dict[str, Any]:
    await asyncio.Event().wait()
    return {}


async def test_a_send_that_fails_because_the_client_left_closes_the_generator() -> None:
    """ASGI 2.4 servers (uvicorn) raise OSError from `send` once the client is gone."""
    relay = Relay()
    stream = relay.chunks()
    sent = 0

    async def send(_message: dict[str, Any]) -> None:
        nonlocal sent
        sent += 1
        if sent == 3:
            raise OSError("client gone")

    # Starlette turns the OSError into ClientDisconnect; the response ends quietly (nobody to tell)
    await _to_http(GatewayResponse(200, {}, stream=stream), 30.0)({"type": "http", "asgi": {"spec_version": "2.4"}},
                                                            never_disconnects, send)
    assert relay.closed and stream.ag_frame is None


async def test_a_disconnect_while_send_waits_closes_the_generator() -> None:
    """Older servers (and Ray Serve's replicas) report the disconnect through `receive` while a
    `send` is still waiting: Starlette cancels the send with the generator suspended at its yield."""
    relay = Relay()
    stream = relay.chunks()
    sending = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            sending.set()
            await asyncio.Event().wait()  # a client that never reads

    async def receive() -> dict[str, Any]:
        await sending.wait()
        return {"type": "http.disconnect"}

    await _to_http(GatewayResponse(200, {}, stream=stream), 30.0)({"type": "http", "asgi": {"spec_version": "2.0"}},
                                                            receive, send)
    assert relay.closed and stream.ag_frame is None
