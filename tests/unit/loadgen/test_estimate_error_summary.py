"""Estimate error in the simulator's and the replay's summaries: |observed - estimated| TTFT."""

from fleetgate.loadgen.replay import RequestResult
from fleetgate.loadgen.report import format_table, summarize
from fleetgate.loadgen.simulate import SimConfig, prepare, simulate
from fleetgate.loadgen.traces import TraceRequest


def trace(count: int) -> list[TraceRequest]:
    return [TraceRequest(i * 0.02, None, ({"role": "user", "content": f"group {i % 3} " * 200 + str(i)},), 8, None, 0)
            for i in range(count)]


def test_simulator_reports_estimate_error_for_routers_that_estimate():
    requests = prepare(trace(200))
    dualmap = simulate(requests, SimConfig(router="dualmap", instances=2))
    assert 0 <= dualmap.ttft_estimate_error_p50_ms <= dualmap.ttft_estimate_error_p90_ms
    assert dualmap.ttft_estimate_error_p90_ms < dualmap.ttft_p99_ms  # an error, not a copy of the TTFT
    plain = simulate(requests, SimConfig(router="round-robin", instances=2))
    assert plain.ttft_estimate_error_p50_ms is None and plain.ttft_estimate_error_p90_ms is None


def result(index: int, ttft_ms: float | None, estimated_ms: float | None) -> RequestResult:
    return RequestResult(index, 0.0, 0.0, ttft_ms, None, 100.0, 200, None, None, 10, 5, 10, 5, 0, None,
                         estimated_ttft_ms=estimated_ms)


def test_replay_summary_has_absolute_estimate_error_percentiles():
    results = [result(0, 100.0, 90.0), result(1, 100.0, 130.0), result(2, 50.0, None), result(3, 80.0, 80.0)]
    summary = summarize(results, ttft_slo_ms=1000)
    assert summary["ttft_estimate_error_ms"] == {"requests": 3, "p50": 10.0, "p90": 26.0}
    assert "TTFT estimate error p90 ms" in format_table([("run", summary)])
    without = summarize([result(0, 100.0, None)], ttft_slo_ms=1000)
    assert without["ttft_estimate_error_ms"]["requests"] == 0
    assert "estimate error" not in format_table([("run", without)])
