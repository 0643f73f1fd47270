"""A process and everything it started, read from Linux's /proc: CPU seconds and resident memory;
open descriptors and TCP connections.

Benchmarks that start a gateway (bare, or Ray Serve with its raylet, proxy and replicas, all
below the process that called ray.init) measure its cost with these; other users' processes on
the same machine are never counted, whatever their names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    title: str  # first word of the command line (Ray names its workers ray::ServeReplica:APP:DEPLOYMENT)
    cpu_s: float  # user + system
    rss_mb: float


def _read(pid: int) -> tuple[int, ProcessInfo] | None:
    """(parent pid, info), or None when the process has gone."""
    base = Path(f"/proc/{pid}")
    try:
        fields = (base / "stat").read_text().rsplit(")", 1)[1].split()  # state ppid ... utime(11) stime(12)
        title = (base / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
        rss_pages = int((base / "statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss_mb = rss_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    return int(fields[1]), ProcessInfo(pid, title.split(" ", 1)[0], cpu_s, rss_mb)


def process_tree(root: int) -> list[ProcessInfo]:
    """`root` and every live process below it."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (read := _read(int(entry.name))) is not None:
            table[int(entry.name)] = read
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        if pid in table:
            found.append(table[pid][1])
        frontier += children.get(pid, [])
    return found


def tree_cpu_s(roots: list[int]) -> float:
    """CPU seconds of the live processes below `roots` (an exited one's time is no longer counted)."""
    return sum(info.cpu_s for root in roots for info in process_tree(root))


def open_fds(pid: int) -> list[str] | None:
    """What each open file descriptor of `pid` points at (`socket:[INODE]` for a socket); None when the
    process has gone or is not ours to read."""
    base = Path(f"/proc/{pid}/fd")
    try:
        names = list(base.iterdir())
    except OSError:
        return None
    targets = []
    for name in names:
        try:
            targets.append(os.readlink(name))
        except OSError:  # closed between the listing and the read
            continue
    return targets


_TCP_LISTEN = "0A"  # the state column of /proc/net/tcp for a listening socket


def tcp_connection_inodes() -> set[str]:
    """Inodes of this machine's TCP sockets that are connections (any state but listening), from
    /proc/net/tcp and tcp6: match them with open_fds' `socket:[INODE]` to count a process's connections."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()  # sl local remote st tx:rx tr:when retrnsmt uid timeout inode ...
            if len(fields) > 9 and fields[3] != _TCP_LISTEN and fields[9] != "0":
                inodes.add(fields[9])
    return inodes


def tcp_connections(fds: list[str], connection_inodes: set[str]) -> int:
    """How many of a process's descriptors (open_fds) are TCP connections (tcp_connection_inodes)."""
    return sum(1 for target in fds if target.startswith("socket:[") and target[8:-1] in connection_inodes)
