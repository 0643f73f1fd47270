"""The replica benchmark's split and table (no processes)."""

from __future__ import annotations

from fleetgate.loadgen.replicas import ReplicaRow, cells, markdown_table, round_robin, verdict
from fleetgate.loadgen.traces import TraceRequest


def request(at: float) -> TraceRequest:
    return TraceRequest(arrival_s=at, prompt="p", messages=None, output_tokens=1)


def row(router: str, replicas: int, hit: float, run: int = 0) -> ReplicaRow:
    engines = {"prefix_hit_ratio": hit, "share_max_min": 1.0, "share_cv": 0.0, "requests_per_instance": {"a": 1}}
    return ReplicaRow(router, replicas, run, "ok", {"run": {"engines": engines}, "slo": {"attainment_ratio": 1.0}})


def test_round_robin_keeps_every_request_and_its_arrival_once() -> None:
    requests = [request(float(i)) for i in range(7)]
    parts = round_robin(requests, 3)
    assert [[r.arrival_s for r in part] for part in parts] == [[0, 3, 6], [1, 4], [2, 5]]


def test_cells_take_medians_and_compare_with_the_fewest_replicas() -> None:
    rows = [row("dualmap", 1, 0.60), row("dualmap", 1, 0.62, 1), row("dualmap", 1, 0.61, 2),
            row("dualmap", 4, 0.60), row("cache-aware", 1, 0.50), row("cache-aware", 4, 0.40)]
    table = {(c["router"], c["replicas"]): c for c in cells(rows)}
    assert table["dualmap", 1]["prefix_hit_ratio"] == 0.61 and table["dualmap", 1]["runs"] == 3
    assert round(table["cache-aware", 4]["hit_ratio_change"], 3) == -0.2
    assert "| cache-aware | 4 | 0.400 | -20.0% |" in markdown_table(cells(rows))
    assert "within the 2% goal" in verdict(cells(rows))


def test_verdict_says_when_dualmap_misses_the_goal() -> None:
    assert "OUTSIDE" in verdict(cells([row("dualmap", 1, 0.60), row("dualmap", 2, 0.55)]))
