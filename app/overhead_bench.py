"""`fleetgate bench overhead`: what the gateway adds over calling a vLLM instance directly.

One emulated instance runs in its own process, made nearly instant (a tiny time scale), so the
figures are the gateway's own cost. The same closed-loop client measures, in one run and side by
side: the instance directly, the bare ASGI gateway (uvicorn, one process) and the gateway on Ray
Serve; at 1 and 32 concurrent clients, streaming and not. Each cell is the median of several runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Iterator

import aiohttp

from fleetgate.app.serve import start_local, stop_local
from fleetgate.core.defaults import DEFAULT_GPU

MODEL = "bench-model"


@dataclass(frozen=True, slots=True)
class Cell:
    p50_ms: float
    p99_ms: float
    rps: float


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _closed_loop(url: str, concurrency: int, requests: int, stream: bool) -> Cell:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello in a few words."}],
            "max_tokens": 8, "stream": stream}
    latencies: list[float] = []
    remaining = requests

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            async with session.post(url + "/v1/chat/completions", json=body) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url} answered {response.status}")
            latencies.append(time.perf_counter() - start)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(client(session) for _ in range(min(concurrency, 4))))  # warm-up connections
        latencies.clear()
        remaining = requests
        began = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return Cell(_percentile(latencies, 0.5) * 1000, _percentile(latencies, 0.99) * 1000, len(latencies) / elapsed)


def _wait_healthy(url: str, timeout_s: float = 60) -> None:
    async def poll() -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(url + "/health") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{url} did not become healthy in {timeout_s:.0f}s")

    asyncio.run(poll())


@contextlib.contextmanager
def _process(*argv: str) -> Iterator[None]:
    process = subprocess.Popen([sys.executable, "-m", "fleetgate.app.cli", *argv], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    try:
        yield
    finally:
        process.terminate()
        process.wait(20)


def run(requests: int, repeats: int, ports: tuple[int, int, int]) -> None:
    emulator_port, bare_port, ray_port = ports
    direct = f"http://127.0.0.1:{emulator_port}"
    settings = {"worker_urls": [direct], "model": MODEL, "router": "round-robin"}
    results: dict[str, dict[tuple[int, bool], Cell]] = {}
    with _process("emulate", "--gpu", DEFAULT_GPU, "--model", MODEL, "--port", str(emulator_port),
                  "--time-scale", "0.001"), \
         _process("serve", "--bare", "--worker-urls", direct, "--model", MODEL, "--router", "round-robin",
                  "--port", str(bare_port)):
        _wait_healthy(direct)
        _wait_healthy(f"http://127.0.0.1:{bare_port}")
        targets = {"direct": direct, "bare ASGI": f"http://127.0.0.1:{bare_port}"}
        modes = [False, True] if shutil.which("haproxy") else [False]
        for haproxy in modes:  # one Ray per mode: the proxy kind is fixed when Ray starts
            start_local(settings, port=ray_port, haproxy=haproxy)
            try:
                _wait_healthy(f"http://127.0.0.1:{ray_port}")
                name = f"Ray Serve ({'HAProxy' if haproxy else 'Python proxy'})"
                results.update(_measure({name: f"http://127.0.0.1:{ray_port}"}, requests, repeats))
            finally:
                stop_local()
        results.update(_measure(targets, requests, repeats))
    _print_table(results, ["direct", "bare ASGI", *(n for n in results if n.startswith("Ray"))])
    if len(modes) == 1:
        print("HAProxy mode was not measured: `haproxy` is not on PATH (Debian package `haproxy`).")


CASES = ((1, False), (1, True), (32, False), (32, True))


def _measure(targets: dict[str, str], requests: int, repeats: int) -> dict[str, dict[tuple[int, bool], Cell]]:
    """Median cell per (target, clients, stream)."""
    measured: dict[str, dict[tuple[int, bool], Cell]] = {}
    for name, url in targets.items():
        for concurrency, stream in CASES:
            runs = [asyncio.run(_closed_loop(url, concurrency, requests, stream)) for _ in range(repeats)]
            measured.setdefault(name, {})[(concurrency, stream)] = Cell(
                *(statistics.median(getattr(r, f) for r in runs) for f in ("p50_ms", "p99_ms", "rps")))
    return measured


def _print_table(results: dict[str, dict[tuple[int, bool], Cell]], order: list[str]) -> None:
    print(f"{'target':<26} {'clients':>7} {'stream':>6} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} "
          f"{'+p50 ms':>8} {'+p99 ms':>8}")
    for case in CASES:
        baseline = results["direct"][case]
        for name in order:
            cell = results[name][case]
            print(f"{name:<26} {case[0]:>7} {str(case[1]):>6} {cell.p50_ms:>8.2f} {cell.p99_ms:>8.2f} "
                  f"{cell.rps:>8.0f} {cell.p50_ms - baseline.p50_ms:>8.2f} {cell.p99_ms - baseline.p99_ms:>8.2f}")
