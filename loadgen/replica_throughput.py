"""Gateway throughput against the replica count: `fleetgate bench replicas --throughput-seconds S`.

Small prompts, non-streamed two-token answers, an emulated fleet running a thousand times faster
than real GPUs: what is left is the gateway's own cost per request. A closed loop of clients
(spread round robin over the replicas, as the routing measurement) sends back to back for S
seconds, after one second of warm-up. Beside requests/s it reports what explains the curve on a
small machine: the gateways' CPU seconds per request (from /proc, each gateway process and every
process below it, so Ray Serve's proxy and replicas count) and how busy the machine's CPUs were.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from fleetgate.loadgen.proctree import tree_cpu_s

FAST_TIME_SCALE = 0.001  # emulated instances answer 1000x faster than the GPU they emulate
WARMUP_S = 1.0


@dataclass(frozen=True, slots=True)
class ThroughputPoint:
    replicas: int
    requests_per_s: float  # median over runs
    gateway_cpu_ms_per_request: float | None
    machine_busy: float  # share of all CPUs busy during the runs (everyone's processes)
    errors: int

    def as_dict(self) -> dict[str, Any]:
        return {"replicas": self.replicas, "requests_per_s": self.requests_per_s,
                "gateway_cpu_ms_per_request": self.gateway_cpu_ms_per_request, "machine_busy": self.machine_busy,
                "errors": self.errors, "cpus": os.cpu_count()}


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


async def closed_loop(urls: Sequence[str], model: str, *, clients: int, seconds: float) -> tuple[int, int, int]:
    """(answered, failed) requests in `seconds` after the warm-up, and every answer including the
    warm-up's; `clients` back-to-back senders."""
    targets = itertools.cycle(urls)
    counting = False
    answered = failed = everything = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def client(index: int) -> None:
            nonlocal answered, failed, everything
            body = {"model": model, "messages": [{"role": "user", "content": f"hi {index}"}], "max_tokens": 2}
            while True:
                url = next(targets)
                try:
                    async with session.post(url + "/v1/chat/completions", json=body) as response:
                        await response.read()
                        ok = response.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    ok = False
                everything += ok
                if counting:
                    answered, failed = answered + ok, failed + (not ok)

        tasks = [asyncio.create_task(client(i)) for i in range(clients)]
        try:
            await asyncio.sleep(WARMUP_S)
            counting = True
            await asyncio.sleep(seconds)
            counting = False
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return answered, failed, everything


def measure(urls: Sequence[str], pids: Sequence[int], model: str, *, replicas: int, clients: int,
            seconds: float, runs: int) -> ThroughputPoint:
    """Median requests/s of `runs` closed-loop runs through already started gateways."""
    from fleetgate.loadgen.replay import run_event_loop

    rates, answered_total, errors = [], 0, 0
    cpu_before = tree_cpu_s(list(pids))
    busy_before, total_before = machine_busy_ticks()
    for _ in range(runs):
        answered, failed, everything = run_event_loop(
            lambda: closed_loop(urls, model, clients=clients, seconds=seconds))
        rates.append(answered / seconds)
        answered_total += everything
        errors += failed
    busy_after, total_after = machine_busy_ticks()
    cpu = tree_cpu_s(list(pids)) - cpu_before
    return ThroughputPoint(
        replicas=replicas, requests_per_s=statistics.median(rates),
        gateway_cpu_ms_per_request=1000 * cpu / answered_total if answered_total else None,
        machine_busy=(busy_after - busy_before) / max(1, total_after - total_before), errors=errors)


def markdown_table(points: Sequence[ThroughputPoint]) -> str:
    base = points[0].requests_per_s if points else 0.0
    lines = ["| replicas | requests/s | vs 1st | gateway CPU ms/request | machine CPUs busy |", "|---|---|---|---|---|"]
    for p in points:
        cpu = "-" if p.gateway_cpu_ms_per_request is None else f"{p.gateway_cpu_ms_per_request:.2f}"
        lines.append(f"| {p.replicas} | {p.requests_per_s:.0f} | {p.requests_per_s / base if base else 0:.2f}x | "
                     f"{cpu} | {p.machine_busy:.0%} |" + (f" ({p.errors} errors)" if p.errors else ""))
    return "\n".join(lines)


def run_throughput(counts: Sequence[int], *, mode: str, pool: Any, clients: int, seconds: float, runs: int,
                   out_dir: Path, start_timeout_s: float) -> list[ThroughputPoint]:
    """Per replica count: a fresh fast fleet (`pool`, an EmulatedPoolSpec), the gateways, the closed loop."""
    from fleetgate.loadgen.replicas import gateways
    from fleetgate.pools.emulator.launcher import fleet_subprocess

    points = []
    for count in counts:
        run_dir = out_dir / f"throughput-x{count}"
        run_dir.mkdir(parents=True, exist_ok=True)
        with fleet_subprocess([pool], time_scale=FAST_TIME_SCALE, timeout_s=start_timeout_s) as fleet, \
                gateways("dualmap", count, mode, fleet, run_dir, ttft_slo_ms=60_000,
                         start_timeout_s=start_timeout_s) as started:
            points.append(measure(started.urls, started.pids, pool.model, replicas=count,
                                  clients=clients, seconds=seconds, runs=runs))
    return points
