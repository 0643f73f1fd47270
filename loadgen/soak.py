"""`fleetgate bench soak`: does the gateway stay flat over a long run at a moderate rate?

A real trace window is replayed in a loop (open loop, loadgen/replay.py) through the gateway for
a bounded time. Every `sample_s` each gateway process (Ray Serve replicas, proxy, controller, and
HAProxy where it runs) is read from /proc: resident memory, open file descriptors, TCP connections;
and each replica's /metrics gives its asyncio task count (`fleetgate_asyncio_tasks`, set at scrape
time). After the load stops and no request is in flight, one more "drained" sample is taken: a
leak shows there, free of the noise of requests in flight.

The verdict per series compares the median of the first samples after warm-up with the median of
the last ones under load (and with the drained sample): growth under GOAL_RATIO, or within a small
absolute allowance for counts that move with requests in flight, is flat.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from fleetgate.loadgen.proctree import ProcessInfo, open_fds, tcp_connection_inodes, tcp_connections
from fleetgate.loadgen.replay import (
    REPLICA_HEADER,
    ReplayConfig,
    Replayer,
    RequestResult,
    Scheduled,
    detect_model,
    make_session,
)
from fleetgate.loadgen.traces import TraceRequest

GOAL_RATIO = 0.05  # the goal: less than 5% growth after warm-up
WARMUP_RATIO, WARMUP_MIN_SAMPLES = 0.2, 2  # warm-up: the first 20% of the samples, at least 2
EDGE_SAMPLES = 3  # start and end are medians of up to this many samples (one sample can catch a burst)
# Counts that follow the requests in flight at the moment of a sample (an upstream connection and its
# descriptor per request, a few tasks each) may differ by this much without counting as growth.
ALLOWANCE = {"rss_mb": 0.0, "fds": 4.0, "tcp": 4.0, "asyncio_tasks": 10.0}
METRICS = {"rss_mb": "RSS (MB)", "fds": "open fds", "tcp": "TCP connections", "asyncio_tasks": "asyncio tasks"}
# Ray's process titles (first word of the command line) -> what the process is to the gateway.
ROLES = (("ray::ServeReplica", "replica"), ("ray::ProxyActor", "proxy"), ("ray::ServeController", "controller"))


@dataclass(frozen=True, slots=True)
class SoakConfig:
    target: str  # the gateway's base URL
    duration_s: float
    sample_s: float
    replicas: int  # gateway replicas behind the target, each scraped for its task count
    root_pid: int  # the process that started the gateway: its tree is searched for gateway processes
    rate_scale: float = 1.0
    model: str = ""  # empty: the target's first model
    concurrency_cap: int = 256
    request_timeout_s: float = 120.0
    drain_timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float  # seconds since the load started
    phase: str  # "load", or "drained" (after the load, nothing in flight)
    values: dict[str, float]  # series ("<process>/<metric>") -> value


@dataclass(frozen=True, slots=True)
class SeriesVerdict:
    series: str
    start: float  # median of the first samples after warm-up
    end: float  # median of the last samples under load
    drained: float | None  # the drained sample's value
    growth_ratio: float  # (end - start) / start
    flat: bool


@dataclass(slots=True)
class SoakRun:
    samples: list[Sample]
    results: list[RequestResult]
    drained: bool  # every replica reported nothing in flight before the drained sample
    meta: dict[str, Any] = field(default_factory=dict)

    def requests(self, examples: int = 10) -> dict[str, Any]:
        """Sent, completed, failed by error kind (and the first few: when, and what the gateway said),
        dropped at the concurrency cap."""
        failed: dict[str, int] = {}
        for r in self.results:
            if r.error not in (None, "dropped"):
                failed[r.error] = failed.get(r.error, 0) + 1
        first = sorted((r for r in self.results if r.error not in (None, "dropped")), key=lambda r: r.scheduled_s)
        return {"sent": sum(r.sent_s is not None for r in self.results),
                "completed": sum(r.error is None for r in self.results),
                "failed": sum(failed.values()), "failed_by_kind": failed,
                "failed_examples": [{"sent_s": r.sent_s, "error": r.error, "detail": r.error_detail}
                                    for r in first[:examples]],
                "dropped": sum(r.error == "dropped" for r in self.results)}


def looped_plan(window: Sequence[TraceRequest], duration_s: float, rate_scale: float) -> list[Scheduled]:
    """The window (arrivals from 0) repeated back to back, rate-scaled, cut at `duration_s`. A lap
    lasts the window's span plus one mean gap, so laps join at the trace's own rate."""
    if not window or rate_scale <= 0:
        raise ValueError("a soak needs a non-empty window and a positive rate scale")
    span_s = window[-1].arrival_s / rate_scale
    lap_s = span_s + (span_s / (len(window) - 1) if len(window) > 1 else 1.0)
    plan: list[Scheduled] = []
    for lap in range(math.ceil(duration_s / lap_s)):
        for request in window:
            send_at_s = lap * lap_s + request.arrival_s / rate_scale
            if send_at_s >= duration_s:
                return plan
            plan.append(Scheduled(len(plan), send_at_s, request))
    return plan


def gateway_processes(tree: Sequence[ProcessInfo]) -> list[tuple[str, ProcessInfo]]:
    """(label, process) of the gateway's processes in a process tree: Ray Serve's replicas (labelled
    with their deployment), proxy and controller, and Ray's HAProxy."""
    found = []
    for info in tree:
        if info.title.rsplit("/", 1)[-1] == "haproxy":
            found.append((f"haproxy {info.pid}", info))
            continue
        for prefix, role in ROLES:
            if info.title.startswith(prefix):
                # a replica's title also names the method it runs now: ...:fleetgate.handle_request
                deployment = info.title.rsplit(":", 1)[-1].split(".", 1)[0] if role == "replica" else ""
                found.append((f"{role}{':' + deployment if deployment else ''} {info.pid}", info))
    return sorted(found, key=lambda pair: pair[0])


def process_values(processes: Sequence[tuple[str, ProcessInfo]]) -> dict[str, float]:
    """RSS, open descriptors and TCP connections of each labelled process (blocking: /proc reads)."""
    connections = tcp_connection_inodes()
    values: dict[str, float] = {}
    for label, info in processes:
        fds = open_fds(info.pid)
        if fds is None:  # gone since the tree was read
            continue
        values[f"{label}/rss_mb"] = round(info.rss_mb, 1)
        values[f"{label}/fds"] = len(fds)
        values[f"{label}/tcp"] = tcp_connections(fds, connections)
    return values


def parse_replica_metrics(text: str) -> tuple[float | None, float]:
    """(asyncio tasks, requests in flight) from one replica's /metrics text."""
    tasks, in_flight = None, 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "fleetgate_asyncio_tasks":
                tasks = sample.value
            elif sample.name == "fleetgate_requests_in_flight":
                in_flight += sample.value
    return tasks, in_flight


async def scrape_replicas(session: aiohttp.ClientSession, target: str, replicas: int,
                          budget_s: float) -> dict[str, tuple[float | None, float]]:
    """Replica (short id) -> (asyncio tasks, in flight). The target picks the replica: Ray Serve sends
    a request to the one with fewer in flight, so while one replica is busier every read may reach
    the other. /metrics is read, one read at a time (concurrent reads would count each other among a
    replica's tasks), with a short pause between reads, until every replica has answered or
    `budget_s` has passed."""
    seen: dict[str, tuple[float | None, float]] = {}
    loop = asyncio.get_running_loop()
    deadline_s = loop.time() + budget_s
    while len(seen) < replicas and loop.time() < deadline_s:
        try:
            async with session.get(target.rstrip("/") + "/metrics") as response:
                response.raise_for_status()
                replica = response.headers.get(REPLICA_HEADER, "gateway").rsplit("/", 1)[-1][:8]
                seen[replica] = parse_replica_metrics(await response.text())
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass  # a missed read leaves a gap in that replica's series, which the verdict shows
        await asyncio.sleep(0.05)
    return seen


class Sampler:
    """One sample: the gateway's processes from /proc, and every replica's task count."""

    def __init__(self, config: SoakConfig, session: aiohttp.ClientSession,
                 process_tree: Callable[[int], list[ProcessInfo]]) -> None:
        self._config = config
        self._session = session
        self._tree = process_tree

    async def sample(self, t_s: float, phase: str) -> tuple[Sample, float]:
        """The sample, and the requests in flight the replicas reported."""
        processes = gateway_processes(await asyncio.to_thread(self._tree, self._config.root_pid))
        values = await asyncio.to_thread(process_values, processes)
        in_flight = 0.0
        for replica, (tasks, replica_in_flight) in sorted(
                (await scrape_replicas(self._session, self._config.target, self._config.replicas,
                                       self._config.sample_s / 2)).items()):
            in_flight += replica_in_flight
            if tasks is not None:
                values[f"replica {replica}/asyncio_tasks"] = tasks
        return Sample(round(t_s, 1), phase, values), in_flight


async def run_soak(window: Sequence[TraceRequest], config: SoakConfig,
                   process_tree: Callable[[int], list[ProcessInfo]],
                   on_sample: Callable[[Sample], None] = lambda _s: None) -> SoakRun:
    """Replay `window` in a loop for `config.duration_s`, sampling every `config.sample_s`; then close
    the client's connections and take the drained sample once the replicas report nothing in flight
    and the descriptors have settled (two reads alike), or at `config.drain_timeout_s`."""
    plan = looped_plan(window, config.duration_s, config.rate_scale)
    replay_config = ReplayConfig(target=config.target, model=config.model, concurrency_cap=config.concurrency_cap,
                                 request_timeout_s=config.request_timeout_s)
    loop = asyncio.get_running_loop()
    samples: list[Sample] = []
    # A fresh connection per /metrics read: a kept-alive one can stay with one replica (HAProxy does that).
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                     timeout=aiohttp.ClientTimeout(total=10)) as scrapes:
        sampler = Sampler(config, scrapes, process_tree)
        async with make_session(replay_config) as session:
            model = config.model or await detect_model(session, config.target)
            replayer = Replayer(ReplayConfig(**{**asdict(replay_config), "model": model}), session)
            started_s = loop.time()
            replay = asyncio.create_task(replayer.run(plan))
            try:
                for k in range(1, int(config.duration_s // config.sample_s) + 1):
                    await asyncio.sleep(max(0.0, started_s + k * config.sample_s - loop.time()))
                    sample, _ = await sampler.sample(loop.time() - started_s, "load")
                    samples.append(sample)
                    on_sample(sample)
                results = await replay
            finally:
                replay.cancel()
        deadline_s = loop.time() + config.drain_timeout_s
        previous: dict[str, float] = {}
        while True:
            sample, in_flight = await sampler.sample(loop.time() - started_s, "drained")
            counts = {name: value for name, value in sample.values.items() if metric_of(name) in ("fds", "tcp")}
            if (in_flight == 0 and counts == previous) or loop.time() > deadline_s:
                break
            previous = counts
            await asyncio.sleep(0.5)
        samples.append(sample)
        on_sample(sample)
    return SoakRun(samples, results, drained=in_flight == 0,
                   meta={"model": model, "planned_requests": len(plan), "window_requests": len(window)})


def warmup(load_samples: int) -> tuple[int, str]:
    """How many samples the warm-up takes, and which rule chose it."""
    by_ratio = math.ceil(WARMUP_RATIO * load_samples)
    if by_ratio >= WARMUP_MIN_SAMPLES:
        return by_ratio, f"first {WARMUP_RATIO:.0%} of the run ({by_ratio} samples)"
    return WARMUP_MIN_SAMPLES, f"first {WARMUP_MIN_SAMPLES} samples (20% of the run is fewer)"


def metric_of(series: str) -> str:
    return series.rsplit("/", 1)[-1]


def within(start: float, value: float, metric: str) -> bool:
    """Whether `value` is no more than GOAL_RATIO (or the metric's allowance) above `start`."""
    return value - start <= max(GOAL_RATIO * start, ALLOWANCE.get(metric, 0.0))


def judge(samples: Sequence[Sample]) -> list[SeriesVerdict]:
    """Every series' start and end after warm-up, growth, and whether it stayed flat (the drained
    sample included)."""
    load = [s for s in samples if s.phase == "load"]
    drained = next((s for s in samples if s.phase == "drained"), None)
    skip, _ = warmup(len(load))
    names = sorted({name for s in load for name in s.values})
    out = []
    for name in names:
        values = [s.values[name] for s in load[skip:] if name in s.values]
        if not values:
            continue
        edge = max(1, min(EDGE_SAMPLES, len(values) // 3))
        start, end = statistics.median(values[:edge]), statistics.median(values[-edge:])
        after = drained.values.get(name) if drained else None
        growth = (end - start) / start if start else (0.0 if end == start else math.inf)
        metric = metric_of(name)
        flat = within(start, end, metric) and (after is None or within(start, after, metric))
        out.append(SeriesVerdict(name, start, end, after, growth, flat))
    return out


def verdict_table(verdicts: Sequence[SeriesVerdict]) -> str:
    """Markdown: series, start, end, drained, growth, flat."""
    lines = ["| series | start | end | drained | growth | flat |", "|---|---|---|---|---|---|"]
    for v in verdicts:
        drained = "-" if v.drained is None else f"{v.drained:g}"
        lines.append(f"| {v.series} | {v.start:g} | {v.end:g} | {drained} | {v.growth_ratio:+.1%} | "
                     f"{'yes' if v.flat else 'NO'} |")
    return "\n".join(lines)


def write_outputs(out_dir: Path, run: SoakRun, verdicts: Sequence[SeriesVerdict], config: SoakConfig) -> list[Path]:
    """samples.csv (t_s, phase, series, value), soak.json (config, requests, warm-up, samples, verdict)
    and soak.png (one panel per metric, a line per process, the warm-up's end marked)."""
    from fleetgate.loadgen.plots import plot_panels

    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "samples.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["t_s", "phase", "series", "value"])
        for s in run.samples:
            writer.writerows([s.t_s, s.phase, name, value] for name, value in sorted(s.values.items()))
    load = [s for s in run.samples if s.phase == "load"]
    skip, rule = warmup(len(load))
    warmup_end_s = load[skip - 1].t_s if 0 < skip <= len(load) else None
    report = {"config": asdict(config), "meta": run.meta, "requests": run.requests(), "drained": run.drained,
              "warmup": {"samples": skip, "rule": rule, "end_s": warmup_end_s},
              "goal_ratio": GOAL_RATIO, "allowance": ALLOWANCE,
              "samples": [asdict(s) for s in run.samples], "verdict": [asdict(v) for v in verdicts]}
    (out_dir / "soak.json").write_text(json.dumps(report, indent=1))
    panels: dict[str, dict[str, tuple[list[float], list[float]]]] = {title: {} for title in METRICS.values()}
    for name in sorted({name for s in run.samples for name in s.values}):
        points = [(s.t_s, s.values[name]) for s in run.samples if name in s.values]
        panels[METRICS[metric_of(name)]][name.rsplit("/", 1)[0]] = ([t for t, _ in points], [v for _, v in points])
    figure = plot_panels(out_dir / "soak.png", panels, marker_s=warmup_end_s, marker_label="end of warm-up",
                         title=f"soak: {config.duration_s:g} s, a sample every {config.sample_s:g} s "
                               "(last point: drained)")
    return [out_dir / "samples.csv", out_dir / "soak.json", figure]
