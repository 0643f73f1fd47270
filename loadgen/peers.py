"""`fleetgate bench peers`: the real SGLang and vLLM routers next to Fleetgate, measured over HTTP.

Every run gets a fresh emulated fleet (no router inherits another's warm prefix caches), one
router process in front of it, and the same trace window replayed open loop. Figures come from
two places that no router controls: the client's own TTFT clock (converted to emulated time, so a
slowed fleet reads as real GPUs would) and the engines' own counters (vllm:prefix_cache_hits and
queries, requests finished per instance), read from each instance's /metrics before and after.
Nothing is installed here: a peer that cannot be found is a row saying how to install it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the command line reads this module's tables; the heavy imports wait for a run
    from fleetgate.loadgen.replay import ReplayConfig, ReplayOutcome
    from fleetgate.loadgen.traces import TraceRequest
    from fleetgate.pools.emulator.launcher import FleetState
    from fleetgate.pools.emulator.local import EmulatedPoolSpec

FLEETGATE_KINDS = ("fleetgate-bare", "fleetgate-serve")
DEFAULT_ROUTERS = ("fleetgate-bare", "fleetgate-serve", "sglang", "vllm-router")
FLEETGATE_DEFAULT_ROUTER = "dualmap"
SLO_TARGET_RATIO = 0.9  # capacity: the highest offered rate with >= 90% of requests within the SLO (as the simulator)
STOP_TIMEOUT_S = 30.0  # Ray Serve's shutdown can take this long; then the process group is killed


@dataclass(frozen=True, slots=True)
class Peer:
    """A router we do not ship: its executable, how to install it, its prefix-aware policy."""

    name: str
    executable: str
    subcommand: tuple[str, ...]
    pip_spec: str
    venv_env: str  # environment variable naming its venv (the flag's default)
    default_policy: str = "cache_aware"

    def install_hint(self) -> str:
        venv = f".peers/{self.name}"
        return (f"install it in its own venv: python3 -m venv {venv} && {venv}/bin/pip install {self.pip_spec}, "
                f"then pass --{self.name}-venv {venv} (or set {self.venv_env})")


PEERS: dict[str, Peer] = {
    "sglang": Peer("sglang", "sglang-router", ("launch",), "sglang-router==0.3.2", "FLEETGATE_SGLANG_VENV"),
    "vllm-router": Peer("vllm-router", "vllm-router", (), "vllm-router==0.1.17", "FLEETGATE_VLLM_ROUTER_VENV"),
}
ROUTER_KINDS = (*FLEETGATE_KINDS, *PEERS)


class PeerMissing(LookupError):
    """The peer's executable is neither in the given venv nor on PATH; the message says how to install it."""


def find_peer(peer: Peer, venv: str | Path | None) -> Path:
    """The peer's executable in `venv`/bin, else on PATH (a venv that lacks it is an error, not a PATH fallback)."""
    if venv:
        candidate = Path(venv) / "bin" / peer.executable
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
        raise PeerMissing(f"{peer.executable} is not in {venv}/bin; {peer.install_hint()}")
    found = shutil.which(peer.executable)
    if found is None:
        raise PeerMissing(f"{peer.executable} is not on PATH; {peer.install_hint()}")
    return Path(found)


@dataclass(frozen=True, slots=True)
class RouterSpec:
    """One row of the comparison: KIND or KIND:POLICY (a Fleetgate router name, or the peer's --policy)."""

    kind: str
    policy: str

    @classmethod
    def parse(cls, text: str) -> RouterSpec:
        kind, _, policy = text.strip().partition(":")
        if kind not in ROUTER_KINDS:
            raise ValueError(f"unknown router {kind!r}; expected one of {', '.join(ROUTER_KINDS)} (optionally :POLICY)")
        if not policy:
            policy = FLEETGATE_DEFAULT_ROUTER if kind in FLEETGATE_KINDS else PEERS[kind].default_policy
        elif kind in FLEETGATE_KINDS:
            from fleetgate.router.routing.registry import ROUTER_NAMES

            if policy not in ROUTER_NAMES:
                raise ValueError(f"unknown Fleetgate router {policy!r}; expected one of {', '.join(ROUTER_NAMES)}")
        return cls(kind, policy)

    @property
    def label(self) -> str:
        default = FLEETGATE_DEFAULT_ROUTER if self.kind in FLEETGATE_KINDS else PEERS[self.kind].default_policy
        return self.kind if self.policy == default else f"{self.kind}:{self.policy}"


def router_command(spec: RouterSpec, *, executable: Path | None, urls: Sequence[str], fleet_file: Path, port: int,
                   metrics_port: int, ttft_slo_ms: float) -> list[str]:
    """argv of one router on 127.0.0.1:`port`; peers get their own Prometheus port (two must never share one)."""
    if spec.kind in FLEETGATE_KINDS:
        argv = [sys.executable, "-m", "fleetgate.app.cli", "serve", "--fleet", str(fleet_file), "--router", spec.policy,
                "--ttft-slo-ms", str(ttft_slo_ms), "--host", "127.0.0.1", "--port", str(port)]
        return argv + (["--bare"] if spec.kind == "fleetgate-bare" else [])
    assert executable is not None
    return [str(executable), *PEERS[spec.kind].subcommand, "--host", "127.0.0.1", "--port", str(port),
            "--worker-urls", *urls, "--policy", spec.policy, "--prometheus-host", "127.0.0.1",
            "--prometheus-port", str(metrics_port)]


# --- the trace window ------------------------------------------------------------------------------


def select_window(requests: Sequence[TraceRequest], *, start_s: float, count: int | None, duration_s: float | None,
                  max_model_len: int) -> tuple[list[TraceRequest], int]:
    """Requests arriving from `start_s` (trace seconds) on, first at 0, cut at `count` or `duration_s`.

    Prompts that reach max_model_len are left out for every router, as the simulator does (vLLM
    answers them 400 whoever routes them); their number is returned beside the window.
    """
    window: list[TraceRequest] = []
    refused = 0
    for request in requests:
        if request.arrival_s < start_s:
            continue
        offset_s = request.arrival_s - start_s
        if duration_s is not None and offset_s >= duration_s:
            break
        if request.input_tokens >= max_model_len:
            refused += 1
            continue
        window.append(dataclasses.replace(request, arrival_s=offset_s))
        if count is not None and len(window) >= count:
            break
    if window:  # the window starts at its first kept request
        first_s = window[0].arrival_s
        window = [dataclasses.replace(r, arrival_s=r.arrival_s - first_s) for r in window]
    return window, refused


# --- engine counters -------------------------------------------------------------------------------

_COUNTERS = {
    "vllm:prefix_cache_hits_total": "hits",
    "vllm:prefix_cache_queries_total": "queries",
    "vllm:e2e_request_latency_seconds_count": "requests",
}


def parse_engine_counters(text: str) -> dict[str, float]:
    """hits, queries (prompt tokens) and finished requests of one instance, summed over label sets."""
    from prometheus_client.parser import text_string_to_metric_families

    out = dict.fromkeys(_COUNTERS.values(), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = _COUNTERS.get(sample.name)
            if key is not None:
                out[key] += sample.value
    return out


def scrape_engines(urls: Sequence[str], timeout_s: float = 10.0) -> dict[str, dict[str, float]]:
    counters = {}
    for url in urls:
        with urllib.request.urlopen(url + "/metrics", timeout=timeout_s) as response:
            counters[url] = parse_engine_counters(response.read().decode())
    return counters


def engine_summary(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The run's deltas: fleet prefix hit ratio (hits / queries), requests per instance and their spread."""
    delta = {url: {k: after[url][k] - before.get(url, {}).get(k, 0.0) for k in after[url]} for url in after}
    hits = sum(d["hits"] for d in delta.values())
    queries = sum(d["queries"] for d in delta.values())
    served = [d["requests"] for d in delta.values()]
    total = sum(served)
    mean = total / len(served) if served else 0.0
    return {
        "prefix_hits_tokens": hits,
        "prefix_queries_tokens": queries,
        "prefix_hit_ratio": hits / queries if queries else None,
        "requests_per_instance": {url: d["requests"] for url, d in delta.items()},
        "share_max_min": max(served) / min(served) if served and min(served) > 0 else None,
        "share_cv": statistics.pstdev(served) / mean if mean > 0 else None,
    }


# --- processes -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_block(count: int, tries: int = 64) -> int:
    """A base port with `count` consecutive free loopback ports (the fleet's KV-event publishers)."""
    rng = random.Random()
    for _ in range(tries):
        base = rng.randrange(20000, 60000 - count)
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise RuntimeError(f"no {count} consecutive free loopback ports found")


def _log_tail(path: Path, chars: int = 1500) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def wait_router_ready(url: str, process: subprocess.Popen[bytes], instances: int, timeout_s: float, log: Path) -> None:
    """Poll GET /health (bounded) until 200; Fleetgate's answer must also count every instance healthy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with status {process.returncode} before it was ready: {_log_tail(log)}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                body = response.read()
            with contextlib.suppress(ValueError, AttributeError):
                if json.loads(body).get("healthy_instances", instances) < instances:
                    raise OSError("not every instance healthy yet")
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.25)
    raise TimeoutError(f"not ready after {timeout_s:.0f} s (log: {log})")


def stop_process_group(process: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the router's process group (Ray Serve's workers too), SIGKILL whatever outlives `timeout_s`."""
    for signum, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def router_process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The router in its own session (so its children stop with it), output to `log`; stopped on exit."""
    with open(log, "wb") as handle:
        process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    try:
        yield process
    finally:
        stop_process_group(process)


# --- runs --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchConfig:
    requests: list[TraceRequest]  # the window, first arrival at 0, in trace (emulated) seconds
    pool: EmulatedPoolSpec  # one pool: the peers route over one model's workers
    time_scale: float
    ttft_slo_ms: float
    out_dir: Path
    start_timeout_s: float = 120.0
    serve_start_timeout_s: float = 300.0  # Ray Serve starts a cluster first
    run_timeout_s: float = 900.0  # wall seconds of replay per run; the rest is reported as unanswered
    venvs: dict[str, str | None] = field(default_factory=dict)  # peer name -> venv (None: PATH)
    trace_meta: dict[str, Any] = field(default_factory=dict)
    kv_events: bool = True  # the emulators publish KV events, as vLLM does with --kv-events-config; only Fleetgate reads them


@dataclass(slots=True)
class RunRow:
    """One router at one rate: its status and, when it ran, its summary (summary.json's document)."""

    label: str
    router: str
    rate_scale: float
    status: str  # ok | not installed: ... | failed: ... | timed out ... | interrupted
    summary: dict[str, Any] | None = None
    run_dir: Path | None = None  # results.jsonl and summary.json, when it ran

    @property
    def ran(self) -> bool:
        return self.summary is not None


class Interrupted(Exception):
    """Ctrl-C during a run: the runs so far are still reported."""


async def _replay(requests: list[TraceRequest], config: ReplayConfig, timeout_s: float) -> tuple[ReplayOutcome, str]:
    """Replay with a wall-clock bound; Ctrl-C stops it too. Returns (outcome, how it ended)."""
    from fleetgate.loadgen.replay import replay_trace

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    ended = ["ok"]

    def interrupt() -> None:
        ended[0] = "interrupted"
        stop.set()

    def time_out() -> None:
        ended[0] = f"timed out after {timeout_s:.0f} s wall (unanswered requests count as failed)"
        stop.set()

    loop.add_signal_handler(signal.SIGINT, interrupt)
    timer = loop.call_later(timeout_s, time_out)
    try:
        outcome = await replay_trace(requests, config, progress=False, stop=stop)
    finally:
        timer.cancel()
        loop.remove_signal_handler(signal.SIGINT)
    return outcome, ended[0]


def _run_dir_name(label: str, rate_scale: float, sweep: bool) -> str:
    name = label.replace(":", "_")
    return f"{name}@x{rate_scale:g}" if sweep else name


def run_one(spec: RouterSpec, rate_scale: float, config: BenchConfig, executable: Path | None, run_dir: Path) -> RunRow:
    """A fresh fleet, the router in front of it, the window replayed, engine counters around it."""
    from fleetgate.pools.config import dump_fleet, fleet_from_pools
    from fleetgate.pools.emulator.launcher import fleet_subprocess

    label = spec.label
    run_dir.mkdir(parents=True, exist_ok=True)
    pool = dataclasses.replace(config.pool, kv_events_base_port=free_port_block(config.pool.count)) if config.kv_events else config.pool
    with fleet_subprocess([pool], time_scale=config.time_scale, timeout_s=config.start_timeout_s) as fleet:
        fleet_file = run_dir / "fleet.yaml"
        fleet_file.write_text(dump_fleet(fleet_from_pools(fleet.to_pools())))
        port, metrics_port = free_port(), free_port()
        argv = router_command(spec, executable=executable, urls=fleet.urls, fleet_file=fleet_file, port=port,
                              metrics_port=metrics_port, ttft_slo_ms=config.ttft_slo_ms)
        url = f"http://127.0.0.1:{port}"
        log = run_dir / "router.log"
        with router_process(argv, log) as process:
            start_timeout = config.serve_start_timeout_s if spec.kind == "fleetgate-serve" else config.start_timeout_s
            try:
                wait_router_ready(url, process, len(fleet.urls), start_timeout, log)
            except (RuntimeError, TimeoutError) as error:
                return RunRow(label, spec.kind, rate_scale, f"failed: router {error}")
            return _measure(spec, rate_scale, config, fleet, url, metrics_port, run_dir)


def _measure(spec: RouterSpec, rate_scale: float, config: BenchConfig, fleet: FleetState, url: str,
             metrics_port: int, run_dir: Path) -> RunRow:
    from fleetgate.loadgen.replay import ReplayConfig, run_event_loop, to_emulated_time
    from fleetgate.loadgen.report import write_run

    before = scrape_engines(fleet.urls)
    replay_config = ReplayConfig(target=url, model=config.pool.model, rate_scale=rate_scale / config.time_scale,
                                 request_timeout_s=config.run_timeout_s)
    outcome, ended = run_event_loop(lambda: _replay(config.requests, replay_config, config.run_timeout_s))
    try:
        engines: dict[str, Any] | None = engine_summary(before, scrape_engines(fleet.urls))
    except OSError:  # Ctrl-C reached the fleet too; a scrape failure otherwise is a failed run
        if ended != "interrupted":
            raise
        engines = None
    if spec.kind in PEERS:  # the peer's own view, kept as evidence of how it routed (e.g. vllm-router's outcomes)
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                                                   timeout=5) as response:
            (run_dir / "router_metrics.txt").write_bytes(response.read())
    results = [to_emulated_time(r, config.time_scale) for r in outcome.results]
    meta = {
        "label": spec.label, "router": spec.kind, "policy": spec.policy, "rate_scale": rate_scale,
        "time_scale": config.time_scale, "instances": config.pool.count, "gpu": config.pool.gpu,
        "model": config.pool.model, "engines": engines, "ended": ended, "wall_s": outcome.wall_s,
        **config.trace_meta,
    }  # fmt: skip
    summary = write_run(run_dir, results, meta, ttft_slo_ms=config.ttft_slo_ms, plots=False)
    if ended == "interrupted":
        raise Interrupted(RunRow(spec.label, spec.kind, rate_scale, ended, summary, run_dir))
    return RunRow(spec.label, spec.kind, rate_scale, ended, summary, run_dir)


def run_bench(
    specs: Sequence[RouterSpec],
    rate_scales: Sequence[float],
    config: BenchConfig,
    *,
    on_run: Callable[[RunRow], None] = lambda _row: None,
) -> tuple[list[RunRow], bool]:
    """Every router at every rate (ascending; a router's sweep stops at its first rate under the
    SLO target). Returns the rows and whether Ctrl-C cut the bench short."""
    rows: list[RunRow] = []
    sweep = len(rate_scales) > 1
    for spec in specs:
        executable = None
        if spec.kind in PEERS:
            try:
                executable = find_peer(PEERS[spec.kind], config.venvs.get(spec.kind))
            except PeerMissing as missing:
                for rate_scale in rate_scales:
                    rows.append(RunRow(spec.label, spec.kind, rate_scale, f"not installed: {missing}"))
                    on_run(rows[-1])
                continue
        for rate_scale in sorted(rate_scales):
            run_dir = config.out_dir / _run_dir_name(spec.label, rate_scale, sweep)
            try:
                row = run_one(spec, rate_scale, config, executable, run_dir)
            except Interrupted as stopped:
                rows.append(stopped.args[0])
                return rows, True
            except KeyboardInterrupt:  # Ctrl-C while a fleet or router was starting
                rows.append(RunRow(spec.label, spec.kind, rate_scale, "interrupted"))
                return rows, True
            except (RuntimeError, TimeoutError, OSError) as error:  # the fleet did not start, a scrape failed
                row = RunRow(spec.label, spec.kind, rate_scale, f"failed: {error}"[:500])
            rows.append(row)
            on_run(row)
            if sweep and (not row.ran or (row.summary["slo"]["attainment_ratio"] or 0) < SLO_TARGET_RATIO):
                break
    return rows, False


def capacities(rows: Sequence[RunRow]) -> dict[str, dict[str, Any]]:
    """Per router: the highest offered rate (emulated req/s) and rate scale with >= 90% within the SLO."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = out.setdefault(row.label, {"capacity_rps": None, "capacity_rate_scale": None, "status": row.status})
        meets = row.ran and (row.summary["slo"]["attainment_ratio"] or 0) >= SLO_TARGET_RATIO
        if meets and (entry["capacity_rate_scale"] is None or row.rate_scale > entry["capacity_rate_scale"]):
            entry.update(capacity_rps=row.summary["offered_rate_per_s"], capacity_rate_scale=row.rate_scale)
        if row.ran:
            entry["status"] = "ok"
    return out


# --- output ------------------------------------------------------------------------------------------


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def markdown_table(rows: Sequence[RunRow], sweep: bool) -> str:
    """The docs table: one line per run; a router that did not run keeps its line, with the reason."""
    head = ["router", "rate x", "SLO met (servable)", "TTFT p50 ms", "TTFT p90 ms", "TTFT p99 ms", "goodput req/s",
            "prefix hit (engines)", "share max/min", "share CV"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if not row.ran:
            lines.append(f"| {row.label} | {row.rate_scale:g} | {row.status} |" + " |" * (len(head) - 3))
            continue
        s, engines = row.summary, row.summary["run"]["engines"] or {}
        ttft, slo = s["ttft_ms"], s["slo"]
        met = f"{slo['attainment_ratio'] * 100:.1f}% ({slo['met']}/{s['requests']})"
        if row.status != "ok":
            met += f" ({row.status.split(' (')[0]})"
        cells = [row.label, f"{row.rate_scale:g}", met, _cell(ttft["p50"], "{:.0f}"), _cell(ttft["p90"], "{:.0f}"),
                 _cell(ttft["p99"], "{:.0f}"), _cell(slo["goodput_per_s"], "{:.2f}"),
                 _cell(engines.get("prefix_hit_ratio"), "{:.3f}"), _cell(engines.get("share_max_min"), "{:.2f}"),
                 _cell(engines.get("share_cv"), "{:.3f}")]
        lines.append("| " + " | ".join(cells) + " |")
    if sweep:
        lines += ["", "| router | capacity rps (>= 90% within SLO) | rate x |", "|---|---|---|"]
        for label, cap in capacities(rows).items():
            if cap["capacity_rps"] is None:
                shown = "below the lowest rate" if cap["status"] == "ok" else cap["status"]
                lines.append(f"| {label} | {shown} | - |")
            else:
                lines.append(f"| {label} | {cap['capacity_rps']:.2f} | {cap['capacity_rate_scale']:g} |")
    return "\n".join(lines)


def write_results(path: Path, rows: Sequence[RunRow], config: BenchConfig, sweep: bool) -> Path:
    """results.json: the setup, one object per run (its summary without per-instance detail), capacities."""
    document = {
        "setup": {"instances": config.pool.count, "gpu": config.pool.gpu, "model": config.pool.model,
                  "time_scale": config.time_scale, "ttft_slo_ms": config.ttft_slo_ms, "requests": len(config.requests),
                  **config.trace_meta},
        "runs": [{"label": r.label, "router": r.router, "rate_scale": r.rate_scale, "status": r.status,
                  "summary": r.summary} for r in rows],
        "capacities": capacities(rows) if sweep else None,
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)  # also when no router ran
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path
