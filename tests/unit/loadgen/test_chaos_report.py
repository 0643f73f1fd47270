"""How a chaos scenario's requests become its figures: failed, cut and where, avoidable, recovery."""

from __future__ import annotations

from fleetgate.loadgen.chaos_report import FaultSpan, analyse, markdown_table, recovery_s
from fleetgate.loadgen.replay import RequestResult

SLO_MS = 1000.0


def result(sent_s: float, *, ttft_ms: float | None = 100.0, e2e_ms: float = 500.0, error: str | None = None,
           status: int = 200, instance: str | None = "a", replica: str | None = "r1") -> RequestResult:
    return RequestResult(0, sent_s, sent_s, ttft_ms, None, e2e_ms, status, error, None, 10, 5, None, None, None, None,
                         instance=instance, replica=replica)


def steady(start_s: float, end_s: float, **kw) -> list[RequestResult]:
    """Four good requests a second from `start_s` to `end_s`."""
    return [result(start_s + i / 4, **kw) for i in range(int((end_s - start_s) * 4))]


def test_a_failure_before_the_first_token_is_avoidable_and_a_cut_counts_where_it_happened() -> None:
    span = FaultSpan(4.0, 6.0, broken="b")
    rows = steady(0, 10) + [
        result(4.5, ttft_ms=None, status=502, error="http_502", instance=None),
        result(3.9, ttft_ms=50.0, e2e_ms=400.0, error="stream_error", instance="b"),
        result(4.1, ttft_ms=50.0, error="stream_error", instance="a"),
    ]
    row = analyse(rows, span, SLO_MS)
    assert (row["sent"], row["failed"], row["avoidable_failures"]) == (43, 1, 1)
    assert row["failed_by_status"] == {"http_502": 1}
    assert row["cut_at"] == {"b": 1, "a": 1} and row["cut_elsewhere"] == 1
    assert row["streaming_at_fault"] >= 1


def test_requests_open_in_a_killed_replica_are_lost_with_it_not_avoidable() -> None:
    span = FaultSpan(4.0, 4.1, broken="r2", place="replica")
    rows = steady(0, 10) + [
        result(3.8, ttft_ms=None, e2e_ms=400.0, status=500, error="http_500", instance=None, replica=None),
        result(4.3, ttft_ms=None, e2e_ms=100.0, status=500, error="http_500", instance=None, replica=None),
        result(3.7, ttft_ms=80.0, error="disconnect", replica="r2"),
    ]
    row = analyse(rows, span, SLO_MS)
    assert (row["lost_with_replica"], row["avoidable_failures"]) == (1, 1)
    assert row["cut_at"] == {"r2": 1} and row["cut_elsewhere"] == 0


def test_recovery_is_the_first_of_two_good_windows_after_the_fault() -> None:
    span = FaultSpan(4.0, 6.0, broken="b")
    slow = [result(6 + i / 4, ttft_ms=3000.0) for i in range(12)]  # three bad windows after the fault's end
    level, recovered = recovery_s(steady(0, 6) + slow + steady(9, 14), span, SLO_MS)
    assert level == 1.0 and recovered == 3.0


def test_one_slow_request_in_a_window_is_forgiven_but_a_run_that_never_recovers_is_not() -> None:
    span = FaultSpan(4.0, 6.0, broken="b")
    one_slow = steady(0, 12) + [result(7.5, ttft_ms=3000.0)]
    assert recovery_s(one_slow, span, SLO_MS)[1] == 0.0
    never = steady(0, 6) + [result(6 + i / 4, ttft_ms=3000.0) for i in range(24)]
    assert recovery_s(never, span, SLO_MS)[1] is None


def test_the_table_has_a_row_per_scenario_and_says_not_back() -> None:
    span = FaultSpan(4.0, 6.0, broken="b")
    never = steady(0, 6) + [result(6 + i / 4, ttft_ms=3000.0) for i in range(24)]
    row = {"scenario": "instance-hang", **analyse(never, span, SLO_MS)}
    table = markdown_table([row, {"scenario": "redis-killed", "error": "TimeoutError: not settled"}])
    assert "| instance-hang | 48 | 48 | 0 | 0 | 0 | 100% / 50% | not back |" in table
    assert "| redis-killed | TimeoutError: not settled |" in table
