"""The pure parts of `fleetgate bench ray-path`: the plan, the proxy choice, the verdict, the sweep."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetgate.loadgen import ray_path
from fleetgate.loadgen.peers import BenchConfig, RunRow
from fleetgate.loadgen.ray_path import (
    BARE,
    HAPROXY,
    PROXY_VARIABLE,
    PYTHON_PROXY,
    RayPathPlan,
    markdown,
    proxy_environment,
    run_path,
    saturation,
    verdict,
)
from fleetgate.pools.emulator.local import EmulatedPoolSpec


def _row(label: str, rate: float, attained: float, *, offered: float = 20.0, failed: int = 0) -> RunRow:
    summary = {"requests": 100, "completed": 100 - failed, "offered_rate_per_s": offered,
               "slo": {"attainment_ratio": attained, "goodput_per_s": attained * offered * 0.8},
               "ttft_ms": {"p90": 900.0, "p99": 1500.0}, "tpot_ms": {"p50": 25.0}}  # fmt: skip
    return RunRow(label, "fleetgate-serve", rate, "ok", summary)


def test_the_plan_runs_every_path_per_repeat_then_sweeps_the_python_proxy() -> None:
    runs = RayPathPlan(7.66, 2, (5.0, 3.0, 7.66)).runs()
    assert [(path.label, rate) for path, rate, _ in runs] == [
        ("bare", 7.66), ("ray-haproxy", 7.66), ("ray-python-proxy", 7.66),
        ("bare", 7.66), ("ray-haproxy", 7.66), ("ray-python-proxy", 7.66),
        ("ray-python-proxy", 3.0), ("ray-python-proxy", 5.0)]  # fmt: skip
    assert len({name for _, _, name in runs}) == len(runs)  # one folder each
    assert [p.label for p, _, _ in RayPathPlan(7.66, 1, (3.0,), (BARE, HAPROXY)).runs()] == ["bare", "ray-haproxy"]


def test_the_proxy_choice_reaches_child_processes_and_is_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROXY_VARIABLE, "keep")
    with proxy_environment(False):
        assert os.environ[PROXY_VARIABLE] == "0"
    with proxy_environment(True):
        assert os.environ[PROXY_VARIABLE] == "1"
    with proxy_environment(None):
        assert os.environ[PROXY_VARIABLE] == "keep"  # bare: untouched
    assert os.environ[PROXY_VARIABLE] == "keep"
    monkeypatch.delenv(PROXY_VARIABLE)
    with proxy_environment(True):
        pass
    assert PROXY_VARIABLE not in os.environ


def test_without_haproxy_its_row_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_path.shutil, "which", lambda _name: None)
    config = BenchConfig(requests=[], pool=EmulatedPoolSpec("b", "m", "h100", 1), time_scale=1.0, ttft_slo_ms=2000,
                         out_dir=tmp_path)
    row = run_path(HAPROXY, 7.66, config, "x")
    assert not row.ran and "apt-get install haproxy" in row.status
    assert not list(tmp_path.iterdir())  # no fleet was started


def test_a_ray_run_on_the_other_proxy_is_a_failed_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`fleetgate serve` fell back to the Python proxy though HAProxy was asked for: not a HAProxy figure."""
    def fake_run_one(spec, rate, config, executable, run_dir: Path) -> RunRow:
        run_dir.mkdir(parents=True)
        (run_dir / "router.log").write_text("Fleetgate on Ray Serve at http://127.0.0.1:1/v1 (Python proxy)\n")
        return _row("fleetgate-serve", rate, 1.0)

    monkeypatch.setattr(ray_path, "run_one", fake_run_one)
    monkeypatch.setattr(ray_path.shutil, "which", lambda _name: "/usr/sbin/haproxy")
    config = BenchConfig(requests=[], pool=EmulatedPoolSpec("b", "m", "h100", 1), time_scale=1.0, ttft_slo_ms=2000,
                         out_dir=tmp_path)
    assert run_path(HAPROXY, 7.66, config, "h").status.startswith("failed: `fleetgate serve` did not report")
    python = run_path(PYTHON_PROXY, 7.66, config, "p")
    assert (python.status, python.label) == ("ok", "ray-python-proxy")


def test_the_verdict_is_goodput_against_bare_within_ten_percent() -> None:
    rows = [_row("bare", 7.66, 1.0), _row("bare", 7.66, 0.98), _row("bare", 7.66, 0.5),  # median 0.98
            _row("ray-haproxy", 7.66, 0.95), _row("ray-python-proxy", 7.66, 0.80, failed=12),
            _row("ray-python-proxy", 3.0, 1.0, offered=8.0)]  # fmt: skip
    verdicts = {v["path"]: v for v in verdict(rows, 7.66)}
    assert verdicts["bare"]["runs"] == 3 and verdicts["bare"]["goodput_per_s"] == pytest.approx(19.6)
    assert verdicts["ray-haproxy"]["goodput_vs_bare"] == pytest.approx(0.95 / 0.98)
    assert verdicts["ray-haproxy"]["within_10_percent"] is True
    assert verdicts["ray-python-proxy"]["within_10_percent"] is False
    assert verdicts["ray-python-proxy"]["runs"] == 1 and verdicts["ray-python-proxy"]["failed"] == 12
    failed = [RunRow("ray-haproxy", "fleetgate-serve", 7.66, "failed: router exited")]
    assert verdict(failed, 7.66)[1]["status"] == "failed: router exited"
    assert verdict(failed, 7.66)[1]["goodput_vs_bare"] is None


def test_the_sweep_names_the_highest_rate_the_python_proxy_still_serves() -> None:
    rows = [_row("ray-python-proxy", 7.66, 0.86, offered=26.7), _row("ray-python-proxy", 3.0, 1.0, offered=10.5),
            _row("ray-python-proxy", 7.66, 0.5, offered=26.7), _row("ray-python-proxy", 7.66, 0.9, offered=26.7),
            _row("ray-python-proxy", 5.0, 0.93, offered=17.4), _row("bare", 7.66, 1.0, offered=26.7)]
    sat = saturation(rows)
    assert [(p["rate_scale"], p["runs"]) for p in sat["points"]] == [(3.0, 1), (5.0, 1), (7.66, 3)]
    assert sat["points"][2]["slo_attainment"] == 0.86  # the median of its three runs
    assert (sat["capacity_rate_scale"], sat["capacity_offered_per_s"]) == (5.0, 17.4)
    table = markdown(verdict(rows, 7.66), sat, time_scale=2.0)
    assert "| ray-python-proxy | 3 | 22.96 | 0.86x | no | 86.0% |" in table
    assert "| 7.66 | 3 | 26.7 | 13.3 | 22.96 | 86.0% | 1500 | 25 |" in table
    assert "rate x5, 17.4 req/s emulated (8.7 req/s wall)" in table
    assert saturation([_row("ray-python-proxy", 3.0, 0.4)])["capacity_rate_scale"] is None
