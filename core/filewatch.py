"""Noticing that a hot-reloaded file (the policy, the keys file) changed, without reading it."""

from __future__ import annotations

import os
from pathlib import Path

from fleetgate.core.clock import Clock, monotonic_clock


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


class ChangedFile:
    """Whether a file, checked at most every `interval_s`, differs (mtime or size) from when it
    was last read: a stat per interval, never a read of an unchanged file."""

    def __init__(self, path: str | Path, *, interval_s: float, clock: Clock = monotonic_clock) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self._clock = clock
        self._next_check_s = clock() + interval_s
        self._seen = _signature(self.path)

    def read(self) -> None:
        """The file is being read now: later changes are measured from this version."""
        self._seen = _signature(self.path)

    def changed(self) -> bool:
        """True when the interval has passed and the file changed since `read` (a missing file is
        not a change: the version in effect stays)."""
        now_s = self._clock()
        if now_s < self._next_check_s:
            return False
        self._next_check_s = now_s + self.interval_s
        signature = _signature(self.path)
        return signature is not None and signature != self._seen
