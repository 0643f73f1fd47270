"""`fleetgate bench loadgen`: how much streaming traffic the replay client sustains on one core.

The target is loadgen/fastsse.py in a subprocess (so it does not share the client's core or event
loop). For each offered rate the client replays evenly spaced requests open loop; a rate counts as
sustained when every request completes, none is dropped, and the p99 send lag stays under 10 ms.
Capacity is completed requests per second of client CPU time: the rate one fully busy core would carry.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from fleetgate.loadgen.replay import (
    ReplayConfig,
    Replayer,
    make_session,
    run_event_loop,
    schedule,
)
from fleetgate.loadgen.report import percentile
from fleetgate.loadgen.traces import TraceRequest

TARGET_RATE_PER_S = 500.0
MAX_SEND_LAG_MS = 10.0


@dataclass(frozen=True, slots=True)
class BenchRun:
    offered_per_s: float
    achieved_per_s: float
    lag_p50_ms: float
    lag_p99_ms: float
    dropped: int
    errors: int
    cpu_ratio: float  # client CPU seconds / wall seconds
    capacity_per_s: float  # completed requests / client CPU seconds

    @property
    def sustained(self) -> bool:
        return (
            self.dropped == 0
            and self.errors == 0
            and self.lag_p99_ms <= MAX_SEND_LAG_MS
            and self.achieved_per_s >= 0.97 * self.offered_per_s
        )


def start_server(chunks: int, delay_s: float = 0.0) -> tuple[subprocess.Popen, str]:
    """loadgen/fastsse.py in a child process; returns it and its base URL once it listens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fleetgate.loadgen.fastsse", "--chunks", str(chunks), "--delay-s", str(delay_s)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("PORT "):
        process.kill()
        raise RuntimeError(f"fast SSE server did not start: {line!r}")
    return process, f"http://127.0.0.1:{int(line.split()[1])}"


async def measure(target: str, rate_per_s: float, seconds: float, chunks: int) -> BenchRun:
    count = max(int(rate_per_s * seconds), 1)
    requests = [TraceRequest(i / rate_per_s, "x" * 64, None, chunks, None, 16) for i in range(count)]
    config = ReplayConfig(target=target, model="fast", concurrency_cap=1000, request_timeout_s=30.0)
    plan = schedule(requests, config)
    async with make_session(config) as session:
        replayer = Replayer(config, session)
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        results = await replayer.run(plan)
        cpu_s, wall_s = time.process_time() - cpu_start, time.perf_counter() - wall_start
    ok = [r for r in results if r.error is None]
    sent = [r for r in results if r.sent_s is not None]
    lags = [(r.sent_s - r.scheduled_s) * 1000 for r in sent]
    ends = [r.sent_s + r.e2e_ms / 1000 for r in ok]
    span_s = max(ends) - min(r.sent_s for r in ok) if ok else 0.0
    return BenchRun(
        offered_per_s=rate_per_s,
        achieved_per_s=len(ok) / span_s if span_s > 0 else 0.0,
        lag_p50_ms=percentile(lags, 50) or 0.0,
        lag_p99_ms=percentile(lags, 99) or 0.0,
        dropped=sum(r.error == "dropped" for r in results),
        errors=sum(r.error not in (None, "dropped") for r in results),
        cpu_ratio=cpu_s / wall_s,
        capacity_per_s=len(ok) / cpu_s if cpu_s > 0 else 0.0,
    )


def _median_run(runs: list[BenchRun]) -> BenchRun:
    """The run with the median achieved rate (a real run, so its numbers belong together)."""
    return sorted(runs, key=lambda r: r.achieved_per_s)[len(runs) // 2]


def run_bench(rates: list[float], *, seconds: float, runs: int, chunks: int) -> str:
    process, target = start_server(chunks)
    try:
        medians = []
        for rate in rates:
            measured = [run_event_loop(lambda: measure(target, rate, seconds, chunks)) for _ in range(runs)]
            medians.append((_median_run(measured), statistics.median(r.capacity_per_s for r in measured)))
    finally:
        process.terminate()
        process.wait(timeout=10)
    lines = [
        f"fleetgate bench loadgen: open-loop streaming replay ({chunks} chunks/response), median of {runs} runs of {seconds:.0f} s",
        f"{'offered/s':>10} {'achieved/s':>11} {'lag p50 ms':>11} {'lag p99 ms':>11} {'dropped':>8} {'errors':>7} "
        f"{'client CPU':>11} {'capacity/s/core':>16} sustained",
    ]
    for run, capacity in medians:
        lines.append(
            f"{run.offered_per_s:>10.0f} {run.achieved_per_s:>11.1f} {run.lag_p50_ms:>11.2f} {run.lag_p99_ms:>11.2f} "
            f"{run.dropped:>8} {run.errors:>7} {run.cpu_ratio * 100:>10.0f}% {capacity:>16.0f} {'yes' if run.sustained else 'no'}"
        )
    best = 0.0
    for run, _ in sorted(medians, key=lambda m: m[0].offered_per_s):  # every lower rate must hold too
        if not run.sustained:
            break
        best = run.offered_per_s
    capacity = max(c for _, c in medians)
    verdict = "meets" if best >= TARGET_RATE_PER_S else "BELOW"
    lines.append(
        f"sustained {best:.0f} req/s (every rate up to it held); capacity {capacity:.0f} req/s per client core; "
        f"baseline target {TARGET_RATE_PER_S:.0f} req/s: {verdict}"
    )
    return "\n".join(lines)
