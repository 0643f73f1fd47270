"""app/fate.py without Ray: an owner process starts a listener inside `fate_shared()` (as `ray.init`
starts Ray's processes, HAProxy among them) and is killed; the listener must not keep the port."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from support.servers import free_port

from fleetgate.app.fate import PortInUseError, claim_port, listeners, owner_mark, reap

pytestmark = pytest.mark.integration

OWNER = """
import subprocess, sys, time
from fleetgate.app.fate import fate_shared
with fate_shared():
    child = subprocess.Popen([sys.executable, "-m", "http.server", sys.argv[1], "--bind", "127.0.0.1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(600)
"""


def wait_for(condition, what: str, timeout_s: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def owner() -> Iterator[tuple[subprocess.Popen[bytes], int, int, str]]:
    """An owner process, the port its marked child listens on, the child's pid and the owner's mark."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", OWNER, str(port)], start_new_session=True)
    mark = owner_mark(process.pid)
    assert mark
    try:
        wait_for(lambda: bool(listeners(port)), "the owner's child did not listen")
        yield process, port, listeners(port)[0], mark
    finally:
        process.kill()
        process.wait(10)
        reap(mark)


def watchdog_of(mark: str) -> int:
    wanted = f"fleetgate.app.fate\0{mark}\0".encode()
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if wanted in (entry / "cmdline").read_bytes():
                return int(entry.name)
    raise AssertionError("no watchdog")


def alive(pid: int) -> bool:
    try:
        return b"zombie" not in Path(f"/proc/{pid}/status").read_bytes().lower()
    except OSError:
        return False


def test_what_an_owner_started_ends_when_it_is_killed(owner) -> None:  # noqa: ANN001
    process, port, child, _mark = owner
    process.kill()
    wait_for(lambda: not alive(child), "the watchdog did not end the owner's child")
    assert claim_port("127.0.0.1", port) == []  # free: nothing left to take back


def test_a_port_held_after_the_owner_and_its_watchdog_died_is_taken_back(owner) -> None:  # noqa: ANN001
    process, port, child, mark = owner
    os.kill(watchdog_of(mark), signal.SIGKILL)
    process.kill()
    process.wait(10)
    assert listeners(port) == [child]  # held: what made the next start fail
    assert child in claim_port("127.0.0.1", port)
    assert not alive(child) and listeners(port) == []


def test_holders_that_are_not_leftovers_are_named_and_left_alone(owner) -> None:  # noqa: ANN001
    _process, port, child, mark = owner
    with pytest.raises(PortInUseError, match=rf"port {port} on 127.0.0.1 is already in use by pid {child} "
                                              rf"\(.*http.server.*\), started by the Fleetgate of pid "
                                              rf"{mark.split('.')[0]}, which is still running"):
        claim_port("127.0.0.1", port)
    assert alive(child)
