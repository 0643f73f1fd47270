"""`fleetgate serve` on Ray Serve with HAProxy, killed, then started again on the same port (issue 16).

Ray's HAProxy outlived a SIGKILLed `fleetgate serve` and kept its port, so the next start failed with
"Address already in use" (app/fate.py). Each gateway here is a real `fleetgate serve` process on a
free loopback port, in front of the session's emulated fleet, asked with the openai client. Ray's
HAProxy also binds its stats and metrics frontends on every interface (Ray's config template has no
host for them), on free ports, for as long as each gateway runs."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from support.serve_process import ServeProcess, serve_processes
from support.servers import free_port

from fleetgate.app.fate import listeners, mark_of, marked

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _haproxy_installed() -> None:
    """HAProxy is the part that kept the port: without it this test would prove nothing, so it fails."""
    if shutil.which("haproxy") is None:
        pytest.fail("needs haproxy on PATH: install it as the README says (apt-get install haproxy)", pytrace=False)


@pytest.fixture
def start(fleet, tmp_path: Path) -> Iterator:  # noqa: ANN001
    """Starts `fleetgate serve` on a port in front of the session's emulated fleet; all stopped at the end."""
    servers, _loop = fleet
    with serve_processes() as started:
        def start(port: int) -> ServeProcess:
            started.append(ServeProcess([s.url for s in servers], port, tmp_path))
            return started[-1]

        yield start


def strand_haproxy(gateway: ServeProcess) -> None:
    """SIGKILL the gateway and its raylet while Ray's HAProxyManager (HAProxy's parent) is stopped, then
    the HAProxyManager: nothing of Ray's is left to stop HAProxy."""
    manager, raylet = (marked_running(gateway, command) for command in (b"ray::HAProxyManager", b"raylet"))
    os.kill(manager, signal.SIGSTOP)
    os.kill(raylet, signal.SIGKILL)
    gateway.process.kill()
    gateway.process.wait(10)
    os.kill(manager, signal.SIGKILL)


def marked_running(gateway: ServeProcess, command: bytes) -> int:
    assert gateway.mark
    for pid in marked(gateway.mark):
        with contextlib.suppress(OSError):
            argv0 = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")[0]
            if argv0.rsplit(b"/", 1)[-1].startswith(command):
                return pid
    raise AssertionError(f"no {command!r} of this gateway")


def gone(mark: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while left := marked(mark):
        assert time.monotonic() < deadline, f"processes {left} of a killed gateway are still running"
        time.sleep(0.1)


def test_killed_3s_after_sigterm_then_started_again_on_the_same_port_serves(start) -> None:  # noqa: ANN001
    """The issue's case; then a HAProxy stranded for sure (Ray stops it itself unless a kill lands while
    its HAProxyManager is busy, e.g. mid-reload: a stopped HAProxyManager stands for that), which the
    watchdog ends. The next start taking back a port whose watchdog was killed too is
    tests/integration/app/test_fate.py's (without Ray)."""
    port = free_port()
    first = start(port)
    assert first.answer() and first.mark
    assert "(HAProxy proxy)" in first.output()
    holders = listeners(port)
    assert holders and all(mark_of(pid) == first.mark for pid in holders)  # Ray's HAProxy, marked as first's
    first.process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        first.process.wait(3)
    first.process.kill()
    first.process.wait(10)

    second = start(port)  # at once: HAProxy may still be there
    assert second.answer() and second.mark
    gone(first.mark)
    strand_haproxy(second)
    gone(second.mark)  # the watchdog's doing: nothing of Ray's is left to stop HAProxy


def test_a_port_held_by_another_program_is_named(start) -> None:  # noqa: ANN001
    port = free_port()
    holder = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while holder.pid not in listeners(port):
            assert time.monotonic() < deadline, "http.server did not listen"
            time.sleep(0.1)
        gateway = start(port)
        assert gateway.process.wait(120) == 1
        assert f"port {port} on 127.0.0.1 is already in use by pid {holder.pid} (" in gateway.output()
        assert "http.server" in gateway.output() and holder.poll() is None  # named, and left alone
    finally:
        holder.kill()
        holder.wait(10)
