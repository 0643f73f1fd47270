"""`fleetgate bench replicas` at a tiny size: every router at 1 and 2 bare replicas and the
throughput curve, through the command line, judged by the JSON it writes (the engines' counters)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
TRACE = ROOT.parent / "shared" / "traces" / "mooncake" / "synthetic_trace.jsonl"
WINDOW_START_S = 1000.7  # 16 requests sharing about half their prompt blocks: something to route by


def test_bench_replicas_tiny(tmp_path: Path) -> None:
    out = tmp_path / "replicas.json"
    done = subprocess.run(
        [sys.executable, "-m", "fleetgate.app.cli", "bench", "replicas", "--replicas", "1,2", "--trace", str(TRACE),
         "--window-start", str(WINDOW_START_S), "--requests", "16", "--instances", "2", "--time-scale", "0.2",
         "--throughput-seconds", "1",
         "--throughput-clients", "8", "--start-timeout-s", "120", "--run-timeout-s", "120", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "| dualmap | 2 |" in done.stdout and "| cache-aware | 2 |" in done.stdout
    document = json.loads(out.read_text())
    table = {(c["router"], c["replicas"]): c for c in document["table"]}
    assert set(table) == {(r, n) for r in ("dualmap", "cache-aware") for n in (1, 2)}
    for cell in table.values():
        assert cell["status"] == "ok"
        assert sum(cell["requests_per_instance"].values()) == 16  # every request answered by an engine
        assert cell["prefix_hit_ratio"] is not None and 0 <= cell["prefix_hit_ratio"] <= 1
        assert cell["slo_attainment"] is not None
    assert table["dualmap", 1]["prefix_hit_ratio"] > 0 and table["dualmap", 2]["prefix_hit_ratio"] > 0
    assert [p["replicas"] for p in document["throughput"]] == [1, 2]
    assert all(p["requests_per_s"] > 0 and p["errors"] == 0 for p in document["throughput"])
