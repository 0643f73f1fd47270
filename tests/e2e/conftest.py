"""One Ray (and Ray Serve) per test session, in front of emulated instances running in a thread."""

from __future__ import annotations

from typing import Iterator

import pytest
from support.gateway import MODEL, emulators
from support.servers import free_port, in_thread


@pytest.fixture(scope="session")
def fleet() -> Iterator[tuple[list, object]]:
    """Two emulated instances on their own loop, so they outlive each test's loop."""
    with in_thread(lambda: emulators(2, time_scale=0.05)) as (servers, loop):
        yield servers, loop


@pytest.fixture(scope="session")
def serve_url(fleet: tuple[list, object]) -> Iterator[str]:
    from fleetgate.app.serve import start_local, stop_local

    servers, _loop = fleet
    port = free_port()
    start_local({"worker_urls": [s.url for s in servers], "model": MODEL, "router": "dualmap", "num_replicas": 2},
                port=port, num_cpus=2, haproxy=False)  # Ray's HAProxy binds stats ports on all interfaces
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_local()
