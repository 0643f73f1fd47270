"""Graceful drain: the requests a gateway process has in flight, and whether it is draining.

Every HTTP request counts from its first byte in to its last byte out (a stream until its end).
`drain` marks the process draining, so /ready answers 503 and load balancers stop sending to it,
then waits for the requests in flight to finish, at most `graceful_shutdown_timeout_s`.

Who starts it: the bare gateway's server on SIGTERM (`DrainingServer`), before it stops accepting;
and the app's lifespan shutdown, before it closes the upstream connections. On Ray Serve a replica
being stopped (scale-down, redeploy) has already drained by then: Serve takes it out of its proxies'
routing and waits for its ongoing requests, streams included, for the same timeout (Serve does not
tell the replica's code when that begins, so there /ready's 503 comes with the lifespan shutdown).
"""

from __future__ import annotations

import asyncio
import time
from types import FrameType
from typing import Any, Awaitable, Callable

import uvicorn

Asgi = Callable[[dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class Drain:
    def __init__(self, poll_s: float = 0.05) -> None:
        self.in_flight = 0
        self.draining = False
        self._poll_s = poll_s

    async def drain(self, timeout_s: float) -> bool:
        """Start draining and wait until nothing is in flight; False when `timeout_s` ran out first."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while self.in_flight > 0:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(self._poll_s)
        return True


class CountInFlight:
    """ASGI middleware: counts `drain.in_flight`, an HTTP request until its response's last byte."""

    def __init__(self, app: Asgi, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1


class DrainingServer(uvicorn.Server):
    """uvicorn for the bare gateway (`fleetgate serve --bare`): on the first SIGTERM or Ctrl-C it drains
    (/ready answers 503, so a load balancer or Kubernetes' readiness probe stops sending, and requests
    in flight finish, at most `timeout_s`), and only then stops as uvicorn does. A second signal
    stops it at once."""

    def __init__(self, config: uvicorn.Config, drain: Drain, timeout_s: float) -> None:
        super().__init__(config)
        self._drain = drain
        self._timeout_s = timeout_s
        self._signal: tuple[int, FrameType | None] | None = None
        self._deadline_s = 0.0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._signal is not None:
            super().handle_exit(sig, frame)
            return
        self._signal = (sig, frame)
        self._drain.draining = True
        self._deadline_s = time.monotonic() + self._timeout_s

    async def on_tick(self, counter: int) -> bool:
        if self._signal is not None and not self.should_exit and (
                self._drain.in_flight == 0 or time.monotonic() >= self._deadline_s):
            super().handle_exit(*self._signal)
        return await super().on_tick(counter)
