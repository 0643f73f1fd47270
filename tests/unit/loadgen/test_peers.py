"""The pure parts of `fleetgate bench peers`: the window, the engine counters, router specs, capacity."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetgate.loadgen.peers import (
    PEERS,
    PeerMissing,
    RouterSpec,
    RunRow,
    capacities,
    engine_summary,
    find_peer,
    parse_engine_counters,
    select_window,
)
from fleetgate.loadgen.traces import TraceRequest

METRICS = """# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 300.0
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="m"} 4.0
vllm:num_requests_running{engine="0",model_name="m"} 2.0
"""


def _request(arrival_s: float, tokens: int = 100) -> TraceRequest:
    return TraceRequest(arrival_s, "p", None, 8, None, tokens)


def test_window_starts_at_zero_and_leaves_out_prompts_over_the_context() -> None:
    trace = [_request(0.0), _request(5.0), _request(6.0, tokens=40_000), _request(7.0), _request(9.0), _request(12.0)]
    window, refused = select_window(trace, start_s=5.0, count=3, duration_s=None, max_model_len=32768)
    assert [r.arrival_s for r in window] == [0.0, 2.0, 4.0]
    assert refused == 1
    window, _ = select_window(trace, start_s=0.0, count=None, duration_s=8.0, max_model_len=32768)
    assert [r.arrival_s for r in window] == [0.0, 5.0, 7.0]


def test_engine_counters_give_the_fleet_hit_ratio_and_the_spread() -> None:
    counters = parse_engine_counters(METRICS)
    assert counters == {"hits": 300.0, "queries": 1000.0, "requests": 4.0}
    zero = {"hits": 0.0, "queries": 0.0, "requests": 0.0}
    after = {"a": counters, "b": {"hits": 100.0, "queries": 1000.0, "requests": 2.0}}
    summary = engine_summary({"a": zero, "b": zero}, after)
    assert summary["prefix_hit_ratio"] == pytest.approx(0.2)
    assert summary["share_max_min"] == pytest.approx(2.0)
    assert summary["share_cv"] == pytest.approx(1 / 3)


def test_router_specs_name_a_policy_and_reject_unknown_ones() -> None:
    assert RouterSpec.parse("fleetgate-bare").policy == "dualmap"
    assert RouterSpec.parse("fleetgate-bare:cache-aware").label == "fleetgate-bare:cache-aware"
    assert RouterSpec.parse("sglang").label == "sglang"
    with pytest.raises(ValueError, match="unknown router"):
        RouterSpec.parse("nginx")
    with pytest.raises(ValueError, match="unknown Fleetgate router"):
        RouterSpec.parse("fleetgate-serve:no-such-router")


def test_a_missing_peer_names_its_pip_command(tmp_path: Path) -> None:
    with pytest.raises(PeerMissing, match=r"pip install sglang-router==0\.3\.2"):
        find_peer(PEERS["sglang"], tmp_path)


def test_capacity_is_the_highest_rate_within_the_slo_target() -> None:
    def row(rate: float, attainment: float) -> RunRow:
        summary = {"slo": {"attainment_ratio": attainment}, "offered_rate_per_s": rate * 4}
        return RunRow("r", "sglang", rate, "ok", summary)

    caps = capacities([row(4, 0.99), row(5, 0.93), row(6, 0.7), RunRow("x", "vllm-router", 4, "not installed: ...")])
    assert caps["r"]["capacity_rate_scale"] == 5 and caps["r"]["capacity_rps"] == 20
    assert caps["x"]["capacity_rps"] is None and caps["x"]["status"].startswith("not installed")
