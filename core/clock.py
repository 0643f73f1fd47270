"""Injected clocks: production code reads time through a `Clock`, tests drive a `ManualClock`."""

from __future__ import annotations

import time
from typing import Callable

Clock = Callable[[], float]
"""A zero-argument callable returning seconds as a float (monotonic where it matters)."""


def monotonic_clock() -> float:
    """The production clock: monotonic seconds, immune to wall-clock jumps."""
    return time.monotonic()


class ManualClock:
    """A clock that only moves when a test says so, so tests never sleep to wait."""

    def __init__(self, start_s: float = 0.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock never goes back")
        self.now_s += seconds
