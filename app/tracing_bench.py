"""`fleetgate bench tracing`: what tracing costs a request, off vs on at two sampling ratios.

One emulated instance (nearly instant, its own process) behind three bare gateways (one process each):
tracing off, on with every request sampled (1.0), and on with 1 in 100 (0.01). Tracing is switched by the
standard variables (OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_SAMPLER_ARG), and the
spans go over OTLP/HTTP to a sink on loopback that accepts and drops them, so the export's cost is
counted. Runs alternate between the gateways so a busy machine slows each of them alike; each cell is the
median of the runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, Mapping

from fleetgate.app.overhead_bench import MODEL, Cell, _closed_loop, _wait_healthy
from fleetgate.core.defaults import DEFAULT_GPU

VARIANTS: dict[str, dict[str, str]] = {
    "off": {"OTEL_TRACES_EXPORTER": "none"},
    "on, sampled 1.0": {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER_ARG": "1.0"},
    "on, sampled 0.01": {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
}
CASES = ((1, False), (1, True), (32, True))


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that reads each export and answers 200 (an empty ExportTraceServiceResponse)."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@contextlib.contextmanager
def _sink() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@contextlib.contextmanager
def _process(argv: list[str], environ: Mapping[str, str]) -> Iterator[None]:
    process = subprocess.Popen([sys.executable, "-m", "fleetgate.app.cli", *argv], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, **environ})
    try:
        yield
    finally:
        process.terminate()
        process.wait(20)


def run(requests: int, repeats: int, first_port: int) -> dict[str, dict[tuple[int, bool], Cell]]:
    emulator = f"http://127.0.0.1:{first_port}"
    urls = {name: f"http://127.0.0.1:{first_port + 1 + n}" for n, name in enumerate(VARIANTS)}
    with _sink() as sink, contextlib.ExitStack() as stack:
        stack.enter_context(_process(["emulate", "--gpu", DEFAULT_GPU, "--model", MODEL, "--port", str(first_port),
                                      "--time-scale", "0.001"], {}))
        _wait_healthy(emulator)  # before the gateways, whose first probe must find it up
        for name, environ in VARIANTS.items():
            stack.enter_context(_process(
                ["serve", "--bare", "--worker-urls", emulator, "--model", MODEL, "--router", "round-robin",
                 "--port", urls[name].rsplit(":", 1)[1]],
                {**environ, "OTEL_EXPORTER_OTLP_ENDPOINT": sink}))
        for url in urls.values():
            _wait_healthy(url)
        runs: dict[tuple[str, int, bool], list[Cell]] = {}
        for _ in range(repeats):
            for case in CASES:
                for name, url in urls.items():
                    clients, stream = case
                    runs.setdefault((name, *case), []).append(asyncio.run(_closed_loop(url, clients, requests, stream)))
    return {name: {case: Cell(*(statistics.median(getattr(c, f) for c in runs[(name, *case)])
                                for f in ("p50_ms", "p99_ms", "rps")))
                   for case in CASES} for name in VARIANTS}


def table(results: dict[str, dict[tuple[int, bool], Cell]]) -> str:
    lines = [f"{'tracing':<18} {'clients':>7} {'stream':>6} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} "
             f"{'+p50 ms':>8} {'req/s vs off':>12}"]
    for case in CASES:
        off = results["off"][case]
        for name, cells in results.items():
            cell = cells[case]
            lines.append(f"{name:<18} {case[0]:>7} {str(case[1]):>6} {cell.p50_ms:>8.2f} {cell.p99_ms:>8.2f} "
                         f"{cell.rps:>8.0f} {cell.p50_ms - off.p50_ms:>8.2f} {cell.rps / off.rps:>11.2f}x")
    return "\n".join(lines)
