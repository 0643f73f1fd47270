"""Pool pressure: a pool goes over SLO when most recent TTFTs break it, and back with hysteresis."""

from __future__ import annotations

import pytest

from fleetgate.router.pressure import PoolPressure


def test_over_slo_after_a_run_of_slow_requests_and_back_after_fast_ones() -> None:
    pressure = PoolPressure(alpha=0.5, enter_ratio=0.5, exit_ratio=0.2)
    assert pressure.observe("p", 0.1, 1.0) is None  # fast: nothing changes
    assert pressure.observe("p", 3.0, 1.0) is None  # share 0.5: not yet past 0.5
    assert pressure.observe("p", 3.0, 1.0) is True  # share 0.75
    assert pressure.over == {"p"}
    assert pressure.observe("p", 0.1, 1.0) is None  # 0.375: still over (hysteresis)
    assert pressure.observe("p", 0.1, 1.0) is False  # 0.1875 < 0.2: back under
    assert pressure.over == set()
    assert pressure.observe("q", 3.0, 1.0) is None  # pools are independent


def test_thresholds_must_leave_a_gap() -> None:
    with pytest.raises(ValueError):
        PoolPressure(enter_ratio=0.3, exit_ratio=0.3)
