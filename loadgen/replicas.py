"""`fleetgate bench replicas`: do N gateway replicas route as one? Measured over HTTP.

The same trace window, at the same offered load, goes through 1, 2 and 4 gateway replicas in
front of a fresh emulated fleet each time; the engines' own counters say how much prefix cache
the routing reused (vllm:prefix_cache_hits / queries) and how requests spread over instances.
DualMap derives the same candidate pair from the prompt on every replica, so its hit ratio should
not move with the replica count; cache-aware (sglang-router's policy) keeps a prefix tree per
replica, so each replica only knows what it sent itself.

Replicas are bare gateway processes (`fleetgate serve --bare`) behind a client-side round robin
by default: request i goes to replica i mod N, a fixed split, so runs differ only in the number of
replicas and no proxy's balancing or CPU enters the comparison. `--mode serve` runs the product's
front tier instead: one `fleetgate serve --replicas N` (Ray Serve chooses the replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import statistics
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetgate.loadgen.peers import (
    engine_summary,
    free_port,
    free_port_block,
    router_process,
    scrape_engines,
    wait_router_ready,
)

if TYPE_CHECKING:
    from fleetgate.loadgen.replay import RequestResult
    from fleetgate.loadgen.traces import TraceRequest
    from fleetgate.pools.emulator.launcher import FleetState
    from fleetgate.pools.emulator.local import EmulatedPoolSpec

ROUTERS = ("dualmap", "cache-aware")
MODES = ("processes", "serve")
HIT_RATIO_GOAL = 0.02  # DualMap at N replicas within 2% (relative) of 1 replica


@dataclass(frozen=True, slots=True)
class ReplicaBenchConfig:
    requests: list[TraceRequest]  # the window, first arrival at 0, trace seconds
    pool: EmulatedPoolSpec
    time_scale: float
    ttft_slo_ms: float
    rate_scale: float
    out_dir: Path
    mode: str = "processes"
    kv_events: bool = True
    start_timeout_s: float = 120.0
    run_timeout_s: float = 900.0
    trace_meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ReplicaRow:
    """One router at one replica count, one run."""

    router: str
    replicas: int
    run: int
    status: str  # ok | failed: ... | timed out ...
    summary: dict[str, Any] | None = None

    @property
    def hit_ratio(self) -> float | None:
        return (self.summary or {}).get("run", {}).get("engines", {}).get("prefix_hit_ratio")


def gateway_argv(router: str, fleet_file: Path, port: int, ttft_slo_ms: float, serve_replicas: int | None) -> list[str]:
    """One bare gateway (`serve_replicas` None) or Ray Serve with that many replicas, on 127.0.0.1:`port`."""
    argv = [sys.executable, "-m", "fleetgate.app.cli", "serve", "--fleet", str(fleet_file), "--router", router,
            "--ttft-slo-ms", str(ttft_slo_ms), "--host", "127.0.0.1", "--port", str(port)]
    return argv + (["--bare"] if serve_replicas is None else ["--replicas", str(serve_replicas)])


@dataclass(frozen=True, slots=True)
class Gateways:
    urls: list[str]  # where the client spreads requests: one per bare replica, or Ray Serve's one
    pids: list[int]  # each gateway process (Ray Serve's own processes run below it)


@contextlib.contextmanager
def gateways(router: str, count: int, mode: str, fleet: FleetState, run_dir: Path, *, ttft_slo_ms: float,
             start_timeout_s: float) -> Iterator[Gateways]:
    """`count` replicas in front of `fleet`, each ready with every instance healthy."""
    from fleetgate.pools.config import dump_fleet, fleet_from_pools

    fleet_file = run_dir / "fleet.yaml"
    fleet_file.write_text(dump_fleet(fleet_from_pools(fleet.to_pools())))
    processes = count if mode == "processes" else 1
    with contextlib.ExitStack() as stack:
        urls = []
        for index in range(processes):
            port = free_port()
            argv = gateway_argv(router, fleet_file, port, ttft_slo_ms, None if mode == "processes" else count)
            log = run_dir / f"gateway-{index}.log"
            process = stack.enter_context(router_process(argv, log))
            urls.append((f"http://127.0.0.1:{port}", process, log))
        for url, process, log in urls:  # started together, waited for in turn
            wait_router_ready(url, process, len(fleet.urls), start_timeout_s, log)
        yield Gateways([url for url, _, _ in urls], [process.pid for _, process, _ in urls])


def round_robin(requests: Sequence[TraceRequest], count: int) -> list[list[TraceRequest]]:
    """Request i to replica i mod `count`, arrival times kept: together they are the same offered load."""
    return [list(requests[index::count]) for index in range(count)]


async def replay_split(parts: Sequence[Sequence[TraceRequest]], urls: Sequence[str], model: str, rate_scale: float,
                       timeout_s: float) -> tuple[list[RequestResult], str]:
    """Each part replayed open loop against its URL, all at once; bounded by `timeout_s` wall."""
    from fleetgate.loadgen.replay import ReplayConfig, replay_trace

    stop = asyncio.Event()
    timer = asyncio.get_running_loop().call_later(timeout_s, stop.set)
    try:
        outcomes = await asyncio.gather(*(
            replay_trace(part, ReplayConfig(target=url, model=model, rate_scale=rate_scale,
                                            request_timeout_s=timeout_s), progress=False, stop=stop)
            for part, url in zip(parts, urls)))
    finally:
        timer.cancel()
    ended = f"timed out after {timeout_s:.0f} s wall (unanswered requests count as failed)" if stop.is_set() else "ok"
    return [result for outcome in outcomes for result in outcome.results], ended


def run_one(router: str, count: int, run: int, config: ReplicaBenchConfig) -> ReplicaRow:
    """A fresh fleet, `count` replicas, the window replayed through them, engine counters around it."""
    from fleetgate.loadgen.replay import run_event_loop, to_emulated_time
    from fleetgate.loadgen.report import write_run
    from fleetgate.pools.emulator.launcher import fleet_subprocess

    run_dir = config.out_dir / f"{router}-x{count}-run{run}"
    run_dir.mkdir(parents=True, exist_ok=True)
    pool = config.pool
    if config.kv_events:
        pool = dataclasses.replace(pool, kv_events_base_port=free_port_block(pool.count))
    with fleet_subprocess([pool], time_scale=config.time_scale, timeout_s=config.start_timeout_s) as fleet, \
            gateways(router, count, config.mode, fleet, run_dir, ttft_slo_ms=config.ttft_slo_ms,
                     start_timeout_s=config.start_timeout_s) as started:
        before = scrape_engines(fleet.urls)
        parts = round_robin(config.requests, len(started.urls))
        results, ended = run_event_loop(lambda: replay_split(parts, started.urls, pool.model,
                                                             config.rate_scale / config.time_scale,
                                                             config.run_timeout_s))
        engines = engine_summary(before, scrape_engines(fleet.urls))
    meta = {"router": router, "replicas": count, "run": run, "mode": config.mode, "rate_scale": config.rate_scale,
            "time_scale": config.time_scale, "instances": pool.count, "gpu": pool.gpu, "kv_events": config.kv_events,
            "engines": engines, "ended": ended, **config.trace_meta}
    results = [to_emulated_time(r, config.time_scale) for r in results]
    summary = write_run(run_dir, results, meta, ttft_slo_ms=config.ttft_slo_ms, plots=False)
    return ReplicaRow(router, count, run, ended, summary)


def run_replica_bench(routers: Sequence[str], counts: Sequence[int], runs: int, config: ReplicaBenchConfig, *,
                      on_run: Callable[[ReplicaRow], None] = lambda _row: None) -> list[ReplicaRow]:
    rows = []
    for run in range(runs):  # runs outermost: a drift of the busy machine touches every cell alike
        for router in routers:
            for count in counts:
                try:
                    row = run_one(router, count, run, config)
                except (RuntimeError, TimeoutError, OSError) as error:  # a fleet or gateway did not start
                    row = ReplicaRow(router, count, run, f"failed: {error}"[:500])
                rows.append(row)
                on_run(row)
    return rows


# --- the table ------------------------------------------------------------------------------------


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def cells(rows: Sequence[ReplicaRow]) -> list[dict[str, Any]]:
    """Per (router, replicas): medians over runs of hit ratio, SLO attainment, share spread, and the
    hit ratio relative to the same router at the fewest replicas."""
    groups: dict[tuple[str, int], list[ReplicaRow]] = {}
    for row in rows:
        groups.setdefault((row.router, row.replicas), []).append(row)
    out = []
    for (router, count), group in groups.items():
        ran = [r for r in group if r.summary is not None]
        engines = [r.summary["run"]["engines"] for r in ran]
        out.append({
            "router": router, "replicas": count, "runs": len(ran), "status": ran and "ok" or group[-1].status,
            "prefix_hit_ratio": _median([r.hit_ratio for r in ran]),
            "slo_attainment": _median([r.summary["slo"]["attainment_ratio"] for r in ran]),
            "share_max_min": _median([e["share_max_min"] for e in engines]),
            "share_cv": _median([e["share_cv"] for e in engines]),
            "requests_per_instance": engines[-1]["requests_per_instance"] if engines else None,
        })
    for cell in out:
        base = min((c for c in out if c["router"] == cell["router"]), key=lambda c: c["replicas"])
        ratio, base_ratio = cell["prefix_hit_ratio"], base["prefix_hit_ratio"]
        cell["hit_ratio_change"] = (ratio - base_ratio) / base_ratio if ratio is not None and base_ratio else None
    return out


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def markdown_table(summary: Sequence[dict[str, Any]]) -> str:
    head = ["router", "replicas", "prefix hit (engines)", "vs fewest replicas", "SLO met", "share max/min", "share CV"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in summary:
        lines.append("| " + " | ".join([
            c["router"], str(c["replicas"]), _fmt(c["prefix_hit_ratio"], "{:.3f}"),
            _fmt(c["hit_ratio_change"], "{:+.1%}"), _fmt(c["slo_attainment"], "{:.1%}"),
            _fmt(c["share_max_min"], "{:.2f}"), _fmt(c["share_cv"], "{:.3f}")]) + " |")
    return "\n".join(lines)


def verdict(summary: Sequence[dict[str, Any]]) -> str:
    """Whether DualMap's hit ratio held within the goal at every replica count."""
    dualmap = [c for c in summary if c["router"] == "dualmap" and c["hit_ratio_change"] is not None]
    if not dualmap:
        return "dualmap: not measured"
    worst = min(c["hit_ratio_change"] for c in dualmap)
    held = worst >= -HIT_RATIO_GOAL
    return (f"dualmap: largest hit-ratio loss {-worst:.1%} of the fewest-replica figure "
            f"({'within' if held else 'OUTSIDE'} the {HIT_RATIO_GOAL:.0%} goal)")


def write_results(path: Path, rows: Sequence[ReplicaRow], config: ReplicaBenchConfig,
                  throughput: Sequence[dict[str, Any]] | None) -> Path:
    document = {
        "setup": {"mode": config.mode, "instances": config.pool.count, "gpu": config.pool.gpu,
                  "model": config.pool.model, "time_scale": config.time_scale, "rate_scale": config.rate_scale,
                  "ttft_slo_ms": config.ttft_slo_ms, "requests": len(config.requests), "kv_events": config.kv_events,
                  **config.trace_meta},
        "table": cells(rows),
        "runs": [{"router": r.router, "replicas": r.replicas, "run": r.run, "status": r.status,
                  "prefix_hit_ratio": r.hit_ratio,
                  "slo_attainment": r.summary["slo"]["attainment_ratio"] if r.summary else None} for r in rows],
        "throughput": list(throughput) if throughput is not None else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path

