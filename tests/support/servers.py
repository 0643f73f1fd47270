"""Run ASGI/aiohttp servers on 127.0.0.1 inside a test: in the test's loop, or in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, TypeVar

import uvicorn
from aiohttp import web

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def serve_asgi(app: Any, port: int | None = None) -> AsyncIterator[str]:
    """Serve `app` with uvicorn in the running loop; yields its base URL once it accepts requests."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if not server.started:
        task.cancel()
        raise RuntimeError(f"uvicorn did not start on port {port}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def serve_aiohttp(app: web.Application) -> AsyncIterator[str]:
    """Serve an aiohttp `app` in the running loop on a free loopback port; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def in_thread(make: Callable[[], contextlib.AbstractAsyncContextManager[T]]) -> Iterator[tuple[T, asyncio.AbstractEventLoop]]:
    """Enter an async context manager in a background thread with its own event loop (for servers
    that must outlive one test's loop, e.g. a fleet that Ray replicas call)."""
    loop = asyncio.new_event_loop()
    stop = threading.Event()
    result: dict[str, Any] = {}

    async def main() -> None:
        try:
            async with make() as value:
                result["value"] = value
                started.set()
                while not stop.is_set():
                    await asyncio.sleep(0.05)
        except BaseException as error:  # noqa: BLE001 - surfaced to the test thread below
            result["error"] = error
            started.set()

    started = threading.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    if not started.wait(60):
        raise RuntimeError("background server did not start within 60 s")
    if "error" in result:
        raise result["error"]
    try:
        yield result["value"], loop
    finally:
        stop.set()
        thread.join(30)
        loop.close()


def run_in(loop: asyncio.AbstractEventLoop, coroutine: Awaitable[T], timeout_s: float = 30) -> T:
    """Run `coroutine` on another thread's loop and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout_s)  # type: ignore[arg-type]
