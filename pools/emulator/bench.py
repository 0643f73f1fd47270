"""`fleetgate bench emulator`: how many emulated instances one core sustains at a request rate.

N instances run in this process (one event loop, so at most one core); an open-loop client in a
separate process sends Poisson arrivals at R req/s per instance (streamed completions) and
measures time to first token. The emulator keeps up while the offered rate is served, the
event loop's lag stays small and the client's TTFT matches the engine's own (emulated) TTFT;
"overhead" is the difference. One core sustains about N / cpu_ratio instances at that rate.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any, Sequence

from fleetgate.core.defaults import DEFAULT_GPU

MODEL = "bench-model"


@dataclass(frozen=True, slots=True)
class BenchRun:
    instances: int
    offered_rps: float
    achieved_rps: float  # completed requests / sending window
    cpu_ratio: float  # CPU seconds of the emulator process / wall seconds
    lag_p99_ms: float  # event-loop lag of the emulator process
    ttft_overhead_ms: float  # mean client TTFT minus the engine's mean TTFT (wall ms)
    cpu_ms_per_request: float  # emulator CPU per completed request, the figure that scales

    def instances_per_core(self, rate_rps: float) -> float:
        """Instances at `rate_rps` each that one fully available core could carry."""
        return 1000.0 / self.cpu_ms_per_request / rate_rps if self.cpu_ms_per_request > 0 else float("inf")


def _arrivals(rate_rps: float, duration_s: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    times, t = [], rng.expovariate(rate_rps)
    while t < duration_s:
        times.append(t)
        t += rng.expovariate(rate_rps)
    return times


async def _client(urls: Sequence[str], rate_rps: float, duration_s: float, output_tokens: int, prompt_tokens: int,
                  seed: int, queue: Any) -> None:
    import aiohttp

    arrivals = _arrivals(rate_rps * len(urls), duration_s, seed)
    shared = ("You are a helpful assistant. " * (prompt_tokens * 4 // 29 + 1))[: prompt_tokens * 2]
    ttfts: list[float] = []
    loop = asyncio.get_running_loop()

    async def one(session: aiohttp.ClientSession, url: str, index: int) -> bool:
        body = {"model": MODEL, "prompt": f"{shared}{index:08d}" + "q" * (prompt_tokens * 2 - 8),
                "max_tokens": output_tokens, "stream": True}
        started = loop.time()
        async with session.post(url + "/v1/completions", json=body) as response:
            if response.status != 200:
                return False
            await response.content.readline()
            ttfts.append(loop.time() - started)
            await response.read()
        return True

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        queue.put(("start",))
        t0 = loop.time()
        tasks = []
        for index, at in enumerate(arrivals):
            delay = t0 + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, urls[index % len(urls)], index)))
        done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=duration_s + 60)
    queue.put(("done", len(arrivals), sum(1 for d in done if d is True), statistics.fmean(ttfts) if ttfts else 0.0))


def _client_main(*args: Any) -> None:
    asyncio.run(_client(*args))


async def _lag_probe(samples: list[float], period_s: float = 0.005) -> None:
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(period_s)
        samples.append(loop.time() - started - period_s)


async def measure(instances: int, *, rate_rps: float, duration_s: float, gpu: str = DEFAULT_GPU, time_scale: float = 1.0,
                  output_tokens: int = 64, prompt_tokens: int = 512, seed: int = 0) -> BenchRun:
    """One run: N in-process instances, the client in a spawned process."""
    from fleetgate.pools.emulator.local import run_emulated_fleet

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    loop = asyncio.get_running_loop()
    async with run_emulated_fleet([("bench", MODEL, gpu, instances)], time_scale=time_scale) as fleet:
        client = context.Process(
            target=_client_main,
            args=(fleet.urls, rate_rps, duration_s, output_tokens, prompt_tokens, seed, queue),
            daemon=True,
        )
        client.start()
        try:
            await loop.run_in_executor(None, queue.get, True, 60)  # the client is up and about to send
            lags: list[float] = []
            probe = asyncio.create_task(_lag_probe(lags))
            cpu0, wall0 = time.process_time(), time.perf_counter()
            _, sent, completed, client_ttft_s = await loop.run_in_executor(None, queue.get, True, duration_s + 90)
            cpu_s = time.process_time() - cpu0
            cpu_ratio = cpu_s / (time.perf_counter() - wall0)
            probe.cancel()
        finally:
            client.join(10)
            if client.is_alive():
                client.terminate()
        ttft_sum = ttft_count = 0.0
        for server in fleet.servers():
            labels = {"model_name": MODEL, "engine": "0"}
            ttft_sum += server.metrics.registry.get_sample_value("vllm:time_to_first_token_seconds_sum", labels) or 0.0
            ttft_count += server.metrics.registry.get_sample_value("vllm:time_to_first_token_seconds_count", labels) or 0.0
    engine_ttft_wall_s = ttft_sum / ttft_count * time_scale if ttft_count else 0.0
    lags.sort()
    return BenchRun(
        instances=instances,
        offered_rps=sent / duration_s,
        achieved_rps=completed / duration_s,
        cpu_ratio=cpu_ratio,
        lag_p99_ms=lags[int(0.99 * (len(lags) - 1))] * 1000 if lags else 0.0,
        ttft_overhead_ms=(client_ttft_s - engine_ttft_wall_s) * 1000,
        cpu_ms_per_request=cpu_s * 1000 / completed if completed else float("inf"),
    )


def median_run(runs: Sequence[BenchRun]) -> BenchRun:
    """Field-wise median of repeated runs."""
    med = lambda attr: statistics.median(getattr(r, attr) for r in runs)  # noqa: E731
    return BenchRun(runs[0].instances, med("offered_rps"), med("achieved_rps"), med("cpu_ratio"), med("lag_p99_ms"),
                    med("ttft_overhead_ms"), med("cpu_ms_per_request"))


def format_table(rows: Sequence[BenchRun], rate_rps: float) -> str:
    lines = [
        f"{'instances':>9} {'offered rps':>11} {'achieved rps':>12} {'CPU %':>6} {'loop lag p99 ms':>15} "
        f"{'TTFT overhead ms':>16} {'CPU ms/req':>10}"
    ]
    for r in rows:
        lines.append(
            f"{r.instances:>9} {r.offered_rps:>11.1f} {r.achieved_rps:>12.1f} {r.cpu_ratio * 100:>6.0f} "
            f"{r.lag_p99_ms:>15.1f} {r.ttft_overhead_ms:>16.1f} {r.cpu_ms_per_request:>10.2f}"
        )
    healthy = [r for r in rows if r.cpu_ratio < 0.9 and r.lag_p99_ms < 20 and r.achieved_rps >= 0.95 * r.offered_rps]
    if healthy:
        best = max(healthy, key=lambda r: r.instances)
        lines.append(
            f"kept up with {best.instances} instances ({best.achieved_rps:.0f} req/s, lag p99 {best.lag_p99_ms:.0f} ms); "
            f"at {best.cpu_ms_per_request:.1f} ms CPU per request one core sustains about "
            f"{best.instances_per_core(rate_rps):.0f} instances at {rate_rps:g} req/s each"
        )
    else:
        lines.append("no configuration kept up (CPU < 90%, lag p99 < 20 ms, >= 95% of the offered rate)")
    return "\n".join(lines)
