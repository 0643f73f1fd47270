"""`fleetgate bench router` at a tiny size, through the command line: the decision-cost table has
a row per router asked for, with p50 <= p99, and the scale-event table moves DualMap pairs near 2/N."""

from __future__ import annotations

import re

import pytest

from fleetgate.app.cli import main


def test_bench_router_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "router", "--sizes", "8,64", "--prompt-tokens", "1024", "--decisions", "20", "--runs", "1",
                 "--routers", "dualmap,round-robin"]) == 0
    out = capsys.readouterr().out
    assert "| router | 8 inst, 1k tok p50/p99 µs | 64 inst, 1k tok p50/p99 µs |" in out
    for router in ("dualmap", "round-robin"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {router} |"))
        cells = re.findall(r"(\d+) / (\d+)", row)
        assert len(cells) == 2 and all(int(p50) <= int(p99) for p50, p99 in cells)
    moved = {m[0]: float(m[1]) for m in re.findall(r"\| 64 \| (add|remove) one \| ([\d.]+) \|", out)}
    assert set(moved) == {"add", "remove"} and all(0.01 < ratio < 0.06 for ratio in moved.values())  # ideal 2/64 = 0.031
