"""The bad-input limits for slow clients (tests/integration/app/test_bad_input.py, bare) through Ray
Serve's two proxies.

- `body_read_timeout_s` holds through both: the body reaches the replica as it arrives.
- `send_timeout_s` holds through HAProxy, whose socket to the replica (direct ingress) pushes back.
  Through the Python proxy it cannot: the replica's ASGI `send` is Ray's `MessageQueue`, an unbounded
  deque whose `__call__` never waits, so a client that stops reading never slows the app (docs/gateway.md).
- A request head sent a byte at a time is cut off by neither proxy, nor by the bare server."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Iterator

import aiohttp
import orjson
import pytest
from support.gateway import MODEL, emulators, eventually
from support.serve_process import ServeProcess, serve_processes
from support.servers import free_port, in_thread
from support.slow_clients import send_and_never_read, trickled_body_answer

pytestmark = pytest.mark.e2e

REQUESTED_TOKENS = 60_000  # ~40 MB of SSE: far more than the socket buffers on the way hold


@pytest.fixture(scope="module")
def haproxy_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, object]]:
    """`fleetgate serve` with HAProxy, 1 s send and body-read timeouts, before one fast emulated instance."""
    if shutil.which("haproxy") is None:
        pytest.fail("needs haproxy on PATH: install it as the README says (apt-get install haproxy)", pytrace=False)
    with (in_thread(lambda: emulators(1, time_scale=0.005, max_model_len=2 * REQUESTED_TOKENS)) as (servers, _loop),
          serve_processes() as started):
        started.append(ServeProcess([s.url for s in servers], free_port(), tmp_path_factory.mktemp("serve"),
                                    "--send-timeout-s", "1", "--body-read-timeout-s", "1"))
        started[0].wait_ready()
        assert "(HAProxy proxy)" in started[0].output()
        yield started[0], servers[0]


async def test_haproxy_path_ends_the_upstream_of_a_stream_nobody_reads(haproxy_gateway) -> None:  # noqa: ANN001
    gateway, instance = haproxy_gateway
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True,
                         "max_tokens": REQUESTED_TOKENS, "ignore_eos": True})
    sock = await send_and_never_read(gateway.url, body)
    try:
        stats = instance.engine.stats
        await eventually(lambda: stats().generation_tokens_total > 0 and stats().running == 0, 120,
                         "generation ended")
        assert stats().generation_tokens_total < REQUESTED_TOKENS  # aborted, with the client still connected
    finally:
        sock.close()


async def test_haproxy_path_answers_a_trickled_body_with_408(haproxy_gateway) -> None:  # noqa: ANN001
    gateway, _instance = haproxy_gateway
    answer = await trickled_body_answer(gateway.url)
    assert re.match(rb"HTTP/1\.1 408", answer), answer[:100]
    assert b'"code":"request_timeout"' in answer


@pytest.fixture(scope="module")
def python_proxy_app(serve_url: str, fleet) -> Iterator[str]:  # noqa: ANN001
    """A second app on the session's Ray (Python proxy) with a 1 s body-read timeout."""
    from ray import serve

    from fleetgate.app.serve import build_app

    servers, _loop = fleet
    serve.run(build_app({"worker_urls": [s.url for s in servers], "model": MODEL, "body_read_timeout_s": 1.0}),
              name="slowclients", route_prefix="/slowclients", blocking=False)
    try:
        yield serve_url + "/slowclients"
    finally:
        serve.delete("slowclients")


async def test_python_proxy_path_answers_a_trickled_body_with_408(python_proxy_app: str) -> None:
    prefix = "/" + python_proxy_app.split("/", 3)[3]
    answer = await trickled_body_answer(python_proxy_app, prefix + "/v1/chat/completions")
    assert re.match(rb"HTTP/1\.1 408", answer), answer[:100]
    async with aiohttp.ClientSession() as session, session.get(python_proxy_app + "/v1/models") as response:
        assert response.status == 200  # and the app still serves
