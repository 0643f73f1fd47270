"""`fleetgate bench ray-path` end to end, as a user runs it: a fresh emulated fleet per run, the gateway
bare and on Ray Serve's Python proxy (a real `fleetgate serve`), Mooncake prompts streamed, judged by counts.

The HAProxy path is left out here: Ray's HAProxy binds its stats and metrics ports, and the replicas'
direct-ingress ports, on every interface, and tests bind loopback only. Its row logic (missing binary,
wrong proxy reported) is in tests/unit/loadgen/test_ray_path.py; its figures in docs/scale-out.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT.parent / "shared" / "traces" / "mooncake" / "synthetic_trace.jsonl"
REQUESTS = 12


def test_bare_and_the_python_proxy_serve_the_same_window(tmp_path: Path) -> None:
    assert TRACE.exists(), f"the shared Mooncake trace is missing: {TRACE}"
    out = tmp_path / "out"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("FLEETGATE_", "RAY_SERVE_ENABLE_HA_PROXY"))}
    process = subprocess.run(
        [sys.executable, "-m", "fleetgate.app.cli", "bench", "ray-path", "--trace", str(TRACE), "--requests",
         str(REQUESTS), "--rate-scale", "1", "--instances", "2", "--time-scale", "1", "--sweep", "",
         "--paths", "bare,ray-python-proxy", "--run-timeout-s", "120", "--out", str(out)],
        check=False, capture_output=True, text=True, timeout=420, env=environ, cwd=tmp_path,
    )  # fmt: skip
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [p["path"] for p in results["paths"]] == ["bare", "ray-python-proxy"]
    for run in results["runs"]:
        assert run["status"] == "ok", run["status"]
        summary = run["summary"]
        assert summary["requests"] == summary["completed"] == REQUESTS, (run["label"], summary["errors"])
        assert summary["tokens"]["prompt"] > REQUESTS * 1000  # Mooncake-length prompts went through
    assert results["paths"][1]["goodput_vs_bare"] is not None
    log = next(out.glob("ray-python-proxy*")) / "router.log"
    assert "WARNING: Ray Serve is using its Python proxy, because" in log.read_text()  # said by the real serve
    assert "| ray-python-proxy | 1 |" in process.stdout
