"""Replay summaries checked against numbers computed by hand for a six-request run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetgate.loadgen.replay import RequestResult
from fleetgate.loadgen.report import (
    format_table,
    load_results,
    meets_slo,
    percentile,
    summarize,
    write_run,
)


def _r(index: int, scheduled_s: float, sent_s: float | None, ttft: float | None, tpot: float | None,
       e2e: float | None, *, error: str | None = None, status: int = 200, usage: tuple | None = None,
       pool: str | None = None, instance: str | None = None) -> RequestResult:  # fmt: skip
    prompt, cached, completion = usage or (None, None, None)
    return RequestResult(
        index, scheduled_s, sent_s, ttft, tpot, e2e, status, error, None, 100, 10, prompt, completion, cached, None,
        pool=pool, instance=instance,
    )  # fmt: skip


RUN = [
    _r(0, 0.0, 0.0, 40, 10, 200, usage=(100, 50, 17), pool="A", instance="a1"),
    _r(1, 0.5, 0.5, 80, 60, 700, usage=(100, 0, 11), pool="A", instance="a2"),  # misses the TPOT SLO
    _r(2, 1.0, 1.002, 150, 20, 1000, usage=(200, 100, 43), pool="B", instance="b1"),  # misses TTFT; sent 2 ms late
    _r(3, 1.5, 1.5, None, None, 5, error="http_503", status=503, pool="B", instance="b1"),
    _r(4, 2.0, None, None, None, None, error="dropped", status=0),
    _r(5, 2.5, 2.5, 20, None, 20, usage=(50, None, 1)),  # one token: no TPOT; target without headers
]


def test_summary_matches_hand_computed_run() -> None:
    s = summarize(RUN, ttft_slo_ms=100, tpot_slo_ms=50)
    assert (s["requests"], s["completed"], s["dropped"], s["errors"]) == (6, 4, 1, {"http_503": 1})
    # last answer: request 5 at 2.5 + 0.020 s; first send at 0
    assert s["duration_s"] == pytest.approx(2.52)
    assert s["offered_rate_per_s"] == pytest.approx(5 / 2.5)
    assert s["throughput_per_s"] == pytest.approx(4 / 2.52)
    # TTFT of completed requests: 20, 40, 80, 150 -> ranks 1.5, 2.7, 2.97
    assert s["ttft_ms"] == pytest.approx({"p50": 60.0, "p90": 129.0, "p99": 147.9, "mean": 72.5})
    # TPOT 10, 20, 60 -> ranks 1, 1.8, 1.98
    assert s["tpot_ms"] == pytest.approx({"p50": 20.0, "p90": 52.0, "p99": 59.2, "mean": 30.0})
    assert s["e2e_ms"]["p50"] == pytest.approx((200 + 700) / 2)
    # send lags 0, 0, 2, 0, 0 ms -> p99 at rank 3.96
    assert s["send_lag_ms"]["p99"] == pytest.approx(1.92)
    # requests 0 and 5 meet both SLOs, out of all six scheduled
    assert s["slo"]["met"] == 2
    assert s["slo"]["attainment_ratio"] == pytest.approx(2 / 6)
    assert s["slo"]["goodput_per_s"] == pytest.approx(2 / 2.52)
    assert s["tokens"] == pytest.approx({"prompt": 450, "cached": 150, "completion": 72, "prefix_hit_ratio": 150 / 400})
    assert s["pools"] == {
        "A": {"requests": 2, "share_ratio": 0.5, "prefix_hit_ratio": 0.25, "ttft_p50_ms": 60.0},
        "B": {"requests": 2, "share_ratio": 0.5, "prefix_hit_ratio": 0.5, "ttft_p50_ms": 150.0},
    }
    assert {k: v["share_ratio"] for k, v in s["instances"].items()} == {"a1": 0.25, "a2": 0.25, "b1": 0.5}


def test_without_tpot_slo_only_ttft_counts() -> None:
    assert summarize(RUN, ttft_slo_ms=100)["slo"]["met"] == 3


def test_empty_run_has_no_numbers_and_no_crash() -> None:
    s = summarize([], ttft_slo_ms=100)
    assert s["requests"] == 0 and s["ttft_ms"]["p50"] is None and s["slo"]["attainment_ratio"] is None
    assert "requests" in format_table([("empty", s)])


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [([], 50, None), ([7.0], 99, 7.0), ([1, 2, 3, 4], 50, 2.5), ([1, 2, 3, 4], 100, 4), ([4, 1, 3, 2], 0, 1), ([0, 10], 90, 9.0)],
)
def test_percentile_interpolates_like_numpy(values: list[float], p: float, expected: float | None) -> None:
    assert percentile(values, p) == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("result", "ttft_slo", "tpot_slo", "met"),
    [
        (RUN[0], 100, 50, True),
        (RUN[0], 40, None, True),  # the bound is inclusive
        (RUN[0], 39.9, None, False),
        (RUN[1], 100, 50, False),
        (RUN[1], 100, None, True),
        (RUN[3], 1e9, None, False),
        (RUN[4], 1e9, None, False),
        (RUN[5], 100, 1, True),
    ],
)
def test_meets_slo(result: RequestResult, ttft_slo: float, tpot_slo: float | None, met: bool) -> None:
    assert meets_slo(result, ttft_slo, tpot_slo) is met


def test_table_puts_runs_side_by_side() -> None:
    first = summarize(RUN, ttft_slo_ms=100, tpot_slo_ms=50)
    second = summarize(RUN[:2], ttft_slo_ms=100)
    lines = format_table([("rr", first), ("dualmap", second)]).splitlines()
    assert lines[0].split() == ["metric", "rr", "dualmap"]
    row = next(line for line in lines if line.startswith("SLO attainment"))
    assert row.split()[-2:] == ["33.3%", "100.0%"]
    assert next(line for line in lines if line.startswith("pool B")).split()[-1] == "-"  # second run never saw B


def test_write_run_round_trips_and_draws_plots(tmp_path: Path) -> None:
    document = write_run(tmp_path, RUN, {"label": "t"}, ttft_slo_ms=100, tpot_slo_ms=50)
    assert load_results(tmp_path) == RUN
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["run"] == {"label": "t"} and on_disk["slo"]["met"] == 2
    assert document["plots"] == ["ttft_cdf.png", "timeline.png", "instances.png"]
    assert all((tmp_path / name).stat().st_size > 1000 for name in document["plots"])
