"""`fleetgate bench ray-path`: what Ray Serve's front tier costs Fleetgate at real load.

The same gateway three ways, each in front of a fresh emulated fleet with the same trace window:
bare (`serve --bare`, uvicorn), on Ray Serve behind Ray's HAProxy ingress, and on Ray's Python
proxy (what `fleetgate serve` falls back to without `haproxy`). Long streamed prompts are what
hurt a Python proxy: every SSE chunk of every answer crosses it. The verdict is goodput (requests
within the TTFT SLO per second of offered load) next to bare's; a short sweep of rates says where
the Python proxy saturates. Runs go through `bench peers`' machinery (loadgen/peers.py), so figures
are measured exactly as there. Note that Ray's HAProxy binds its stats and metrics ports, and the
replicas' direct-ingress ports, on every interface (Ray's choice; nothing here can narrow it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fleetgate.loadgen.peers import (
    SLO_TARGET_RATIO,
    BenchConfig,
    Interrupted,
    RouterSpec,
    RunRow,
    run_one,
)

WITHIN_OF_BARE = 0.10  # the bar: goodput on the Ray path within 10% of bare
PROXY_VARIABLE = "RAY_SERVE_ENABLE_HA_PROXY"  # app/serve.py haproxy_mode reads it when no choice is forced
SERVE_BANNER = {True: "(HAProxy proxy)", False: "(Python proxy)"}  # what `fleetgate serve` prints once up


@dataclass(frozen=True, slots=True)
class GatewayPath:
    """One way in front of the fleet: a label, how the gateway runs, and (on Ray) which proxy."""

    label: str
    spec: RouterSpec
    haproxy: bool | None  # None: bare, no Ray


BARE = GatewayPath("bare", RouterSpec("fleetgate-bare", "dualmap"), None)
HAPROXY = GatewayPath("ray-haproxy", RouterSpec("fleetgate-serve", "dualmap"), True)
PYTHON_PROXY = GatewayPath("ray-python-proxy", RouterSpec("fleetgate-serve", "dualmap"), False)
PATHS = (BARE, HAPROXY, PYTHON_PROXY)


@contextlib.contextmanager
def proxy_environment(haproxy: bool | None) -> Iterator[None]:
    """The proxy choice for `fleetgate serve` processes started inside: they inherit the variable."""
    before = os.environ.get(PROXY_VARIABLE)
    if haproxy is not None:
        os.environ[PROXY_VARIABLE] = "1" if haproxy else "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PROXY_VARIABLE, None)
        else:
            os.environ[PROXY_VARIABLE] = before


def run_path(path: GatewayPath, rate_scale: float, config: BenchConfig, run_name: str) -> RunRow:
    """One run of `path`; a Ray run that came up on the other proxy than asked is a failed row."""
    if path.haproxy and shutil.which("haproxy") is None:
        return RunRow(path.label, path.spec.kind, rate_scale,
                      "not installed: haproxy is not on PATH (Debian: apt-get install haproxy)")
    run_dir = config.out_dir / run_name
    with proxy_environment(path.haproxy):
        row = run_one(path.spec, rate_scale, config, None, run_dir)
    row.label = path.label
    if path.haproxy is not None and row.ran:
        log = (run_dir / "router.log").read_text(errors="replace")
        if SERVE_BANNER[path.haproxy] not in log:
            row.status = f"failed: `fleetgate serve` did not report {SERVE_BANNER[path.haproxy]}"
    return row


PATH_NAMES = {path.label: path for path in PATHS}


@dataclass(frozen=True, slots=True)
class RayPathPlan:
    """What one bench runs: each path at `rate_scale`, `repeats` times, then the Python proxy swept."""

    rate_scale: float
    repeats: int
    sweep: tuple[float, ...]  # more rate scales for the Python proxy (the main rate is one of its points)
    paths: tuple[GatewayPath, ...] = PATHS

    def runs(self) -> list[tuple[GatewayPath, float, str]]:
        """(path, rate scale, run folder name) in the order they run."""
        out = [(path, self.rate_scale, f"{path.label}@x{self.rate_scale:g}#{repeat + 1}")
               for repeat in range(self.repeats) for path in self.paths]
        if PYTHON_PROXY in self.paths:
            out += [(PYTHON_PROXY, rate, f"{PYTHON_PROXY.label}@x{rate:g}") for rate in sorted(set(self.sweep))
                    if rate != self.rate_scale]
        return out


def run_ray_path(plan: RayPathPlan, config: BenchConfig, *,
                 on_run: Callable[[RunRow], None] = lambda _row: None) -> tuple[list[RunRow], bool]:
    """Every planned run; returns the rows and whether Ctrl-C cut it short."""
    rows: list[RunRow] = []
    for path, rate_scale, name in plan.runs():
        try:
            row = run_path(path, rate_scale, config, name)
        except Interrupted as stopped:
            stopped.args[0].label = path.label
            rows.append(stopped.args[0])
            return rows, True
        except KeyboardInterrupt:
            rows.append(RunRow(path.label, path.spec.kind, rate_scale, "interrupted"))
            return rows, True
        except (RuntimeError, TimeoutError, OSError) as error:
            row = RunRow(path.label, path.spec.kind, rate_scale, f"failed: {error}"[:500])
        rows.append(row)
        on_run(row)
    return rows, False


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def offered_goodput(summary: dict[str, Any]) -> float | None:
    """Requests within the SLO per second of offered load (attainment x offered rate): what the path
    delivers in time at this load. The report's own goodput divides by the time to the last answer
    instead, which also charges the decode of the window's last long generations (shown beside it)."""
    attained, offered = summary["slo"]["attainment_ratio"], summary["offered_rate_per_s"]
    return None if attained is None or offered is None else attained * offered


def verdict(rows: Sequence[RunRow], rate_scale: float, paths: Sequence[GatewayPath] = PATHS) -> list[dict[str, Any]]:
    """Per path at the main rate (medians over its runs): goodput and its ratio to bare's, SLO
    attainment, TTFT p90/p99, TPOT p50 (the cost of relaying every chunk) and failed requests."""
    out = []
    for path in paths:
        runs = [r for r in rows if r.label == path.label and r.rate_scale == rate_scale and r.ran and r.status == "ok"]
        out.append({
            "path": path.label, "runs": len(runs),
            "goodput_per_s": _median([offered_goodput(r.summary) for r in runs]),
            "goodput_to_last_answer_per_s": _median([r.summary["slo"]["goodput_per_s"] for r in runs]),
            "slo_attainment": _median([r.summary["slo"]["attainment_ratio"] for r in runs]),
            "ttft_p90_ms": _median([r.summary["ttft_ms"]["p90"] for r in runs]),
            "ttft_p99_ms": _median([r.summary["ttft_ms"]["p99"] for r in runs]),
            "tpot_p50_ms": _median([r.summary["tpot_ms"]["p50"] for r in runs]),
            "failed": _median([r.summary["requests"] - r.summary["completed"] for r in runs]),
            "status": "ok" if runs else next((r.status for r in rows if r.label == path.label), "not run"),
        })  # fmt: skip
    bare = next((entry["goodput_per_s"] for entry in out if entry["path"] == BARE.label), None)
    for entry in out:
        ratio = entry["goodput_per_s"] / bare if bare and entry["goodput_per_s"] is not None else None
        entry["goodput_vs_bare"] = ratio
        entry["within_10_percent"] = None if ratio is None else ratio >= 1 - WITHIN_OF_BARE
    return out


def saturation(rows: Sequence[RunRow]) -> dict[str, Any]:
    """The Python proxy per rate (medians over its runs there), lowest first, and its capacity: the
    highest rate with >= 90% of requests within the SLO (as `bench peers`); None when none had."""
    runs = [r for r in rows if r.label == PYTHON_PROXY.label and r.ran]
    table = []
    for rate in sorted({r.rate_scale for r in runs}):
        summaries = [r.summary for r in runs if r.rate_scale == rate]
        table.append({"rate_scale": rate, "runs": len(summaries),
                      "offered_per_s": _median([s["offered_rate_per_s"] for s in summaries]),
                      "goodput_per_s": _median([offered_goodput(s) for s in summaries]),
                      "slo_attainment": _median([s["slo"]["attainment_ratio"] for s in summaries]),
                      "ttft_p99_ms": _median([s["ttft_ms"]["p99"] for s in summaries]),
                      "tpot_p50_ms": _median([s["tpot_ms"]["p50"] for s in summaries])})  # fmt: skip
    meeting = [p for p in table if (p["slo_attainment"] or 0) >= SLO_TARGET_RATIO]
    best = max(meeting, key=lambda p: p["rate_scale"]) if meeting else None
    return {"points": table, "capacity_rate_scale": best and best["rate_scale"],
            "capacity_offered_per_s": best and best["offered_per_s"]}


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def markdown(verdicts: Sequence[dict[str, Any]], sat: dict[str, Any], time_scale: float) -> str:
    """The two docs tables: the paths at the main rate, then the Python proxy's sweep."""
    lines = ["| path | runs | goodput req/s | vs bare | within 10% | SLO met | TTFT p90 ms | TTFT p99 ms | TPOT p50 ms "
             "| failed | goodput to last answer |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in verdicts:
        if not v["runs"]:
            lines.append(f"| {v['path']} | 0 | {v['status']} |" + " |" * 8)
            continue
        within = "-" if v["within_10_percent"] is None else ("yes" if v["within_10_percent"] else "no")
        lines.append(f"| {v['path']} | {v['runs']} | {_cell(v['goodput_per_s'], '{:.2f}')} | "
                     f"{_cell(v['goodput_vs_bare'], '{:.2f}x')} | {within} | {_cell(v['slo_attainment'], '{:.1%}')} | "
                     f"{_cell(v['ttft_p90_ms'], '{:.0f}')} | {_cell(v['ttft_p99_ms'], '{:.0f}')} | "
                     f"{_cell(v['tpot_p50_ms'], '{:.0f}')} | {_cell(v['failed'], '{:g}')} | "
                     f"{_cell(v['goodput_to_last_answer_per_s'], '{:.2f}')} |")
    lines += ["", "| Python proxy: rate x | runs | offered req/s (emulated) | wall req/s | goodput req/s | SLO met "
              "| TTFT p99 ms | TPOT p50 ms |", "|---|---|---|---|---|---|---|---|"]
    for p in sat["points"]:
        wall = None if p["offered_per_s"] is None else p["offered_per_s"] / time_scale
        lines.append(f"| {p['rate_scale']:g} | {p['runs']} | {_cell(p['offered_per_s'], '{:.1f}')} | "
                     f"{_cell(wall, '{:.1f}')} | {_cell(p['goodput_per_s'], '{:.2f}')} | "
                     f"{_cell(p['slo_attainment'], '{:.1%}')} | {_cell(p['ttft_p99_ms'], '{:.0f}')} | "
                     f"{_cell(p['tpot_p50_ms'], '{:.0f}')} |")
    if sat["capacity_rate_scale"] is None:
        lines.append(f"\nPython proxy: under {SLO_TARGET_RATIO:.0%} within the SLO at every rate tried.")
    else:
        lines.append(f"\nPython proxy capacity (>= {SLO_TARGET_RATIO:.0%} within the SLO): rate x"
                     f"{sat['capacity_rate_scale']:g}, {sat['capacity_offered_per_s']:.1f} req/s emulated "
                     f"({sat['capacity_offered_per_s'] / time_scale:.1f} req/s wall).")
    return "\n".join(lines)
