"""The emulator benchmark's arithmetic: medians per field and the 'one core sustains' verdict."""

from __future__ import annotations

from fleetgate.pools.emulator.bench import BenchRun, _arrivals, format_table, median_run


def run(instances: int, lag_ms: float, cpu_ms: float) -> BenchRun:
    return BenchRun(instances, 2.0 * instances, 2.0 * instances, 0.2, lag_ms, 3.0, cpu_ms)


def test_median_is_per_field() -> None:
    merged = median_run([run(8, 5.0, 4.0), run(8, 50.0, 3.0), run(8, 7.0, 9.0)])
    assert (merged.lag_p99_ms, merged.cpu_ms_per_request) == (7.0, 4.0)


def test_verdict_uses_the_largest_healthy_row() -> None:
    table = format_table([run(8, 2.0, 4.0), run(32, 5.0, 5.0), run(64, 80.0, 5.0)], rate_rps=2.0)
    assert "kept up with 32 instances" in table
    assert "about 100 instances at 2 req/s" in table  # 1000 ms / 5 ms = 200 req/s per core


def test_verdict_when_nothing_kept_up() -> None:
    assert "no configuration kept up" in format_table([run(8, 90.0, 4.0)], rate_rps=2.0)


def test_arrivals_are_poisson_at_the_rate() -> None:
    arrivals = _arrivals(50.0, 20.0, seed=1)
    assert arrivals == sorted(arrivals) and 900 < len(arrivals) < 1100
