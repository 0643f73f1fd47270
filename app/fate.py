"""Ray's local processes end with the process that started them, and a port left held by a killed
Fleetgate is taken back on the next start.

`ray.init` starts gcs_server and raylet with Linux's parent-death signal, and Ray's workers exit when
the raylet goes; but Ray Serve's HAProxy (a child of its HAProxyManager actor) and Ray's dashboard
and runtime-env agents outlive an owner killed with SIGKILL: HAProxy keeps the gateway's port, and
the next start there fails with "Address already in use". Every process Ray starts inherits the
environment `ray.init` saw, so within `fate_shared()` each one carries `OWNER_VARIABLE`, the owner's
pid and start time (a recycled pid is not the owner). A watchdog (a small process in a session of its
own, one per owner) waits for the owner to end, however it ends, and kills every process with its
mark; and `claim_port` reaps a marked process on the port whose owner is gone (the watchdog was
killed too), and names any other holder. Linux only (/proc); elsewhere both find nothing.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

OWNER_VARIABLE = "FLEETGATE_RAY_OWNER"
PROC = Path("/proc")
log = logging.getLogger("fleetgate.app.fate")


class PortInUseError(Exception):
    """The port is held by a process that is not a killed Fleetgate's leftover; the message names it."""


def owner_mark(pid: int) -> str | None:
    """`pid` and its start time (clock ticks after boot), or None when there is no such process."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return f"{pid}.{stat.rsplit(')', 1)[1].split()[19]}"  # field 22; the name before ')' may hold spaces


def owner_alive(mark: str) -> bool:
    return owner_mark(int(mark.split(".", 1)[0])) == mark


def mark_of(pid: int) -> str | None:
    """The owner mark in `pid`'s environment (as it was when it started), if any."""
    try:
        environ = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    prefix = OWNER_VARIABLE.encode() + b"="
    return next((item[len(prefix):].decode() for item in environ.split(b"\0") if item.startswith(prefix)), None)


def marked(mark: str) -> list[int]:
    """Processes that carry `mark`."""
    return [int(entry.name) for entry in PROC.glob("[0-9]*") if mark_of(int(entry.name)) == mark]


def reap(mark: str, timeout_s: float = 10.0) -> list[int]:
    """SIGKILL every process carrying `mark`, again until none is left (one may fork meanwhile);
    returns the pids killed."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout_s
    while (left := [pid for pid in marked(mark) if pid != os.getpid()]) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.05)
    return killed


@functools.cache
def _watchdog(mark: str) -> None:
    """Start the watchdog of this process (`mark`): it reads a pipe whose only writer is this process,
    so its read ends when this process does, however it ends. Its own session keeps it out of a
    terminal's Ctrl-C and a kill of this process group; the write end is not inherited by children."""
    read, _write = os.pipe()  # the write end stays open for the life of this process, on purpose
    environ = {name: value for name, value in os.environ.items() if name != OWNER_VARIABLE}
    subprocess.Popen([sys.executable, "-m", "fleetgate.app.fate", mark], stdin=read, env=environ,
                     stdout=subprocess.DEVNULL, start_new_session=True)
    os.close(read)


@contextlib.contextmanager
def fate_shared() -> Iterator[None]:
    """Processes started within (`ray.init`'s, and theirs) are killed once this process has ended."""
    mark = owner_mark(os.getpid())
    if mark is None:  # no /proc
        yield
        return
    _watchdog(mark)
    before = os.environ.get(OWNER_VARIABLE)
    os.environ[OWNER_VARIABLE] = mark
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(OWNER_VARIABLE, None)
        else:
            os.environ[OWNER_VARIABLE] = before


def _bindable(host: str, port: int) -> bool:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    try:
        socket.create_server((host, port), family=family).close()
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            return False
        raise
    return True


def listeners(port: int) -> list[int]:
    """Pids with a socket listening on `port` (any address) that this user can see."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (PROC / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
    pids = []
    for entry in PROC.glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                pids.append(int(entry.name))
    return pids


def _command(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
    except OSError:
        return "?"


def claim_port(host: str, port: int, timeout_s: float = 15.0) -> list[int]:
    """Make sure `host`:`port` can be bound: when its holders are all leftovers of a Fleetgate whose
    owner is gone, kill them (returns their pids, and every other process of theirs); else raise
    PortInUseError naming the holders."""
    if _bindable(host, port):
        return []
    holders = listeners(port)
    marks = {pid: mark_of(pid) for pid in holders}
    stale = {mark for mark in marks.values() if mark is not None and not owner_alive(mark)}
    if not holders or any(mark is None or mark not in stale for mark in marks.values()):
        raise PortInUseError(f"port {port} on {host} is already in use by {_describe(holders, marks)}; stop "
                             "it, or choose another --port")
    killed = [pid for mark in sorted(stale) for pid in reap(mark)]
    log.warning("port %d was held by processes of a Fleetgate that is gone (owner pid %s); stopped pids %s",
                port, ", ".join(sorted(mark.split(".")[0] for mark in stale)), killed)
    deadline = time.monotonic() + timeout_s
    while not _bindable(host, port):
        if time.monotonic() > deadline:
            raise PortInUseError(f"port {port} on {host} is still in use after stopping the leftovers of a "
                                 f"killed Fleetgate (pids {killed})")
        time.sleep(0.05)
    return killed


def _describe(holders: list[int], marks: dict[int, str | None]) -> str:
    if not holders:
        return "a process this user cannot see"
    parts = []
    for pid in holders:
        mark = marks[pid]
        owner = ("" if mark is None else
                 f", started by the Fleetgate of pid {mark.split('.')[0]}, which is still running")
        parts.append(f"pid {pid} ({_command(pid)}){owner}")
    return "; ".join(parts)


def _watch(mark: str) -> None:
    """The watchdog: wait for the owner to end (EOF on stdin), then kill what it left."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdin.buffer.read()
    reap(mark)


if __name__ == "__main__":
    _watch(sys.argv[1])
