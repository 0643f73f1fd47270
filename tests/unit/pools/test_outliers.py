"""Outlier detection on a manual clock: thresholds, growing ejections, half-open trials, latency, back-off."""

from __future__ import annotations

from fleetgate.core.clock import ManualClock
from fleetgate.pools.outliers import (
    CONSECUTIVE,
    HALF_OPEN_FAILED,
    LATENCY,
    UNREACHABLE,
    OutlierDetector,
    OutlierPolicy,
)

POOL = ("a", "b", "c")


def detector(**policy: float) -> tuple[OutlierDetector, ManualClock]:
    clock = ManualClock(100.0)
    return OutlierDetector(OutlierPolicy(**policy), base_ejection_s=1.0, clock=clock), clock  # type: ignore[arg-type]


def test_only_consecutive_failures_eject() -> None:
    d, _ = detector(consecutive_failures=3)
    assert d.failure("a", "p") is None and d.failure("a", "p") is None
    d.success("a", "p", None, POOL)  # a success breaks the run
    assert d.failure("a", "p") is None and d.failure("a", "p") is None and not d.out("a")
    assert d.failure("a", "p") == CONSECUTIVE and d.out("a") and not d.admit("a", "p")
    assert d.ejections == {("p", "a", CONSECUTIVE): 1}


def test_a_refused_connection_ejects_at_once() -> None:
    d, _ = detector()
    assert d.failure("a", "p", refused=True) == UNREACHABLE and d.out("a")


def test_half_open_lets_one_trial_through_and_failures_double_the_ejection() -> None:
    d, clock = detector(consecutive_failures=1, max_ejection_s=3.0)
    d.failure("a", "p")
    for ejection_s in (1.0, 2.0, 3.0, 3.0):  # base * 2^(n-1), capped
        clock.advance(ejection_s - 0.01)
        assert d.out("a"), f"still ejected just before {ejection_s}s"
        clock.advance(0.01)
        assert d.admit("a", "p") and not d.admit("a", "p"), "exactly one trial at a time"
        assert d.failure("a", "p") == HALF_OPEN_FAILED
    clock.advance(3.0)
    assert d.admit("a", "p")
    d.success("a", "p", None, POOL)  # the trial succeeded: closed, ejection count reset
    assert d.admit("a", "p") and d.admit("a", "p")
    assert d.half_open_trials == {("p", "a", "failure"): 4, ("p", "a", "success"): 1}
    d.failure("a", "p")
    clock.advance(1.0)
    assert not d.out("a"), "a fresh ejection is back to the base length"


def test_failures_of_attempts_sent_before_the_ejection_count_for_nothing() -> None:
    d, clock = detector(consecutive_failures=1)
    d.failure("a", "p")
    assert d.failure("a", "p") is None and d.failure("a", "p") is None
    clock.advance(1.0)
    assert not d.out("a")


def test_an_abandoned_trial_frees_the_half_open_slot() -> None:
    d, clock = detector(consecutive_failures=1)
    d.failure("a", "p")
    clock.advance(1.0)
    assert d.admit("a", "p") and not d.admit("a", "p")
    assert d.abandon("a") and d.admit("a", "p")


def test_a_slow_instance_is_a_latency_outlier_once_there_are_enough_samples() -> None:
    d, _ = detector(latency_factor=3.0, latency_min_samples=4, latency_floor_s=0.05)
    for _ in range(4):
        assert d.success("b", "p", 0.1, POOL) is None
        assert d.success("c", "p", 0.12, POOL) is None
    for _ in range(3):
        assert d.success("a", "p", 1.0, POOL) is None, "too few samples yet"
    assert d.success("a", "p", 1.0, POOL) == LATENCY and d.out("a")
    assert d.ejections == {("p", "a", LATENCY): 1}


def test_latency_never_ejects_below_the_floor_or_with_fewer_than_two_peers() -> None:
    d, _ = detector(latency_factor=3.0, latency_min_samples=2, latency_floor_s=0.05)
    for _ in range(2):
        d.success("b", "p", 0.001, POOL)
        d.success("c", "p", 0.001, POOL)
    assert [d.success("a", "p", 0.04, POOL) for _ in range(3)] == [None] * 3, "under the floor"
    pair, _ = detector(latency_min_samples=2, latency_floor_s=0.0)
    for _ in range(2):
        pair.success("b", "p", 0.001, POOL)
    assert [pair.success("a", "p", 9.0, POOL) for _ in range(3)] == [None] * 3, "one peer: which is slow?"


def test_back_off_holds_an_instance_out_without_counting_a_failure() -> None:
    d, clock = detector(consecutive_failures=1)
    d.back_off("a", "p", 10.0)
    assert d.out("a") and not d.admit("a", "p") and d.backoffs == {("p", "a"): 1}
    clock.advance(10.0)
    assert d.admit("a", "p") and d.admit("a", "p") and not d.ejections


def test_streams_cut_after_their_first_byte_still_add_up_to_an_ejection() -> None:
    d, _ = detector(consecutive_failures=3)
    for _ in range(2):
        d.success("a", "p", 0.01, POOL, complete=False)  # first byte of a stream...
        assert d.failure("a", "p") is None  # ...then cut mid-way
    d.success("a", "p", 0.01, POOL, complete=False)
    assert d.failure("a", "p") == CONSECUTIVE
