"""`fleetgate bench peers` end to end: the real sglang-router and vllm-router and Fleetgate, each in
front of a fresh emulated fleet, judged by the engines' own counters.

The peers are not ours to install here: .ci/run puts them in `.peers/sglang` and
`.peers/vllm-router` (FLEETGATE_SGLANG_VENV / FLEETGATE_VLLM_ROUTER_VENV point elsewhere). A peer
that is missing fails this test with the command that installs it; it never skips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleetgate.loadgen.peers import PEERS, PeerMissing, find_peer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
REQUESTS = 30
# Two prefix groups on two instances: whoever routes, some instance sees a group's prefix twice.
TRACE = f"groups=2,prefix_tokens=1024,suffix_tokens=32,output_tokens=8,rate=20,count={REQUESTS},seed=0"


def peer_venv(name: str) -> str:
    """The peer's venv, or a failure that says how to install it."""
    peer = PEERS[name]
    venv = os.environ.get(peer.venv_env) or str(ROOT / ".peers" / name)
    try:
        find_peer(peer, venv)
    except PeerMissing as missing:
        pytest.fail(f"{missing} (.ci/run does this)")
    return venv


def bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    """Run the command as a user does, bounded in time; return it and its results.json."""
    out = tmp_path / "out"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    process = subprocess.run(
        [sys.executable, "-m", "fleetgate.app.cli", "bench", "peers", "--out", str(out), *args],
        check=False, capture_output=True, text=True, timeout=180, env=environ, cwd=tmp_path,
    )  # fmt: skip
    assert (out / "results.json").exists(), f"no results.json; status {process.returncode}\n{process.stderr[-3000:]}"
    return process, json.loads((out / "results.json").read_text())


def test_real_routers_and_fleetgate_in_one_table(tmp_path: Path) -> None:
    """Every router answers every request, and the engines' counters saw each exactly once."""
    sglang, vllm_router = peer_venv("sglang"), peer_venv("vllm-router")
    process, results = bench(
        tmp_path, "--trace-format", "synthetic", "--trace", TRACE, "--requests", str(REQUESTS), "--instances", "2",
        "--time-scale", "0.2", "--routers", "fleetgate-bare,sglang,vllm-router",
        "--sglang-venv", sglang, "--vllm-router-venv", vllm_router, "--run-timeout-s", "60",
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    assert [run["label"] for run in results["runs"]] == ["fleetgate-bare", "sglang", "vllm-router"]
    for run in results["runs"]:
        assert run["status"] == "ok", run
        summary = run["summary"]
        assert summary["requests"] == summary["completed"] == REQUESTS, (run["label"], summary["errors"])
        engines = summary["run"]["engines"]
        assert sum(engines["requests_per_instance"].values()) == REQUESTS, (run["label"], engines)
        assert len(engines["requests_per_instance"]) == 2
        assert engines["prefix_hits_tokens"] > 0, (run["label"], engines)  # a fresh fleet: hits come from this run
        assert engines["prefix_queries_tokens"] >= REQUESTS * 1024
    assert (tmp_path / "out" / "compare.png").stat().st_size > 0
    assert "| vllm-router | 1 |" in process.stdout  # the Markdown table for docs


def test_missing_peer_is_a_row_that_says_how_to_install_it(tmp_path: Path) -> None:
    """A bogus venv: no fleet is started, the row stays in the table with the pip command."""
    process, results = bench(
        tmp_path, "--trace-format", "synthetic", "--trace", TRACE, "--routers", "sglang,vllm-router",
        "--sglang-venv", str(tmp_path / "no-such-venv"), "--vllm-router-venv", str(tmp_path / "no-such-venv"),
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    statuses = [run["status"] for run in results["runs"]]
    assert len(statuses) == 2 and all(s.startswith("not installed") for s in statuses), statuses
    assert "pip install sglang-router==0.3.2" in process.stdout
    assert "pip install vllm-router==0.1.17" in process.stdout
