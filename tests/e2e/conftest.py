"""One Ray (and Ray Serve) per test session, in front of emulated instances running in a thread.

The gateway is deployed from deploy/serve.yaml read as `fleetgate serve --config` reads it, with the
fleet replaced by the emulated one and a free port, so the shipped config is what these tests run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
from support.gateway import MODEL, emulators
from support.servers import free_port, in_thread

from fleetgate.app.cli import build_parser
from fleetgate.app.commands.serve import command_settings
from fleetgate.app.settings import ServeCommandSettings

SERVE_YAML = Path(__file__).resolve().parents[2] / "deploy" / "serve.yaml"

# Autoscaling tests (test_serve_autoscale.py) see load within a second, not after Ray's default 10 s
# metric pushes; read by Ray's processes when they start, so set before the session's Ray.
os.environ.setdefault("RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.5")


@pytest.fixture(scope="session")
def fleet() -> Iterator[tuple[list, object]]:
    """Two emulated instances on their own loop, so they outlive each test's loop."""
    with in_thread(lambda: emulators(2, time_scale=0.05)) as (servers, loop):
        yield servers, loop


@pytest.fixture(scope="session")
def serve_settings(fleet: tuple[list, object]) -> ServeCommandSettings:
    servers, _loop = fleet
    args = build_parser().parse_args(["serve", "--config", str(SERVE_YAML), "--worker-urls", *[s.url for s in servers],
                                      "--model", MODEL, "--port", str(free_port())])
    return command_settings(args, environ={})


@pytest.fixture(scope="session")
def serve_url(serve_settings: ServeCommandSettings) -> Iterator[str]:
    from fleetgate.app.serve import start_local, stop_local

    start_local(serve_settings.serve_args(), host=serve_settings.host, port=serve_settings.port,
                num_cpus=2, haproxy=False)  # Ray's HAProxy binds stats ports on all interfaces
    try:
        yield f"http://{serve_settings.host}:{serve_settings.port}"
    finally:
        stop_local()
