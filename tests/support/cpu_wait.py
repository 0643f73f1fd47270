"""How long the OS kept this process waiting for a CPU: what timing tests subtract before judging.

Linux reports, per thread, the time it was runnable but queued behind other processes
(/proc/thread-self/schedstat, second field, ns). On a machine shared by several test runs this
can reach seconds per second; a punctuality assertion is only meaningful when it stayed small.
"""

from __future__ import annotations

from pathlib import Path

_SCHEDSTAT = Path("/proc/thread-self/schedstat")


def cpu_wait_s() -> float | None:
    """Seconds this thread has spent runnable but waiting for a CPU so far; None where unknown."""
    try:
        return int(_SCHEDSTAT.read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None
