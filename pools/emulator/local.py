"""Emulated fleets on this machine: in-process for tests and benchmarks, or in a child process
(for Ray tests and `fleetgate fleet up`, where the fleet must outlive or sit beside the caller).

    async with run_emulated_fleet([("chat", "llama-3.1-8b", "l4", 2)], time_scale=0.1) as fleet:
        fleet.urls            # ["http://127.0.0.1:PORT", ...]
        fleet.pools()         # {"chat": Pool(...)} for the gateway
        fleet.server(url)     # the EmulatorServer (engine stats, fault knob)
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Sequence

from pools.config import FleetConfig
from pools.model import Endpoint, Pool
from pools.emulator.server import EmulatorServer


@dataclass(frozen=True, slots=True)
class EmulatedPoolSpec:
    """`count` emulated instances of `model` on `gpu`; ports from `base_port` or free ones."""

    name: str
    model: str
    gpu: str
    count: int = 1
    base_port: int | None = None
    max_model_len: int | None = None

    @classmethod
    def parse(cls, text: str) -> "EmulatedPoolSpec":
        """NAME:MODEL:GPU:COUNT, the command-line form."""
        parts = text.split(":")
        if len(parts) != 4 or not parts[3].isdigit():
            raise ValueError(f"pool spec {text!r} is not NAME:MODEL:GPU:COUNT")
        return cls(parts[0], parts[1], parts[2], int(parts[3]))

    def to_arg(self) -> str:
        return f"{self.name}:{self.model}:{self.gpu}:{self.count}"


PoolSpecLike = EmulatedPoolSpec | tuple[Any, ...]


def as_spec(spec: PoolSpecLike) -> EmulatedPoolSpec:
    return spec if isinstance(spec, EmulatedPoolSpec) else EmulatedPoolSpec(*spec)


def build_pool(name: str, model: str, gpu: str, urls: Sequence[str], max_context_tokens: int) -> Pool:
    """A Pool of emulated instances, endpoints named POOL-INDEX."""
    return Pool(name, model, tuple(
        Endpoint(name=f"{name}-{i}", url=url, pool=name, model=model, gpu=gpu, max_context_tokens=max_context_tokens)
        for i, url in enumerate(urls)
    ))


def specs_from_fleet(config: FleetConfig) -> list[EmulatedPoolSpec]:
    """The emulator pools of a fleet file (pools with `count`; URL lists and vLLM pools are not ours)."""
    return [
        EmulatedPoolSpec(p.name, p.model, p.gpu, p.count, p.base_port, p.max_context_tokens)
        for p in config.pools
        if p.count is not None and p.backend == "emulator"
    ]


class EmulatedFleet:
    """Running emulator servers grouped by pool."""

    def __init__(self) -> None:
        self._servers: dict[str, EmulatorServer] = {}
        self._pools: dict[str, tuple[EmulatedPoolSpec, list[str]]] = {}

    @property
    def urls(self) -> list[str]:
        return list(self._servers)

    def server(self, url: str) -> EmulatorServer:
        return self._servers[url.rstrip("/").removesuffix("/v1")]

    def servers(self) -> list[EmulatorServer]:
        return list(self._servers.values())

    def pool_urls(self) -> dict[str, list[str]]:
        return {name: list(urls) for name, (_, urls) in self._pools.items()}

    def pools(self) -> dict[str, Pool]:
        """The fleet as the gateway's model sees it."""
        return {
            name: build_pool(name, spec.model, spec.gpu, urls, self._servers[urls[0]].engine.max_model_len)
            for name, (spec, urls) in self._pools.items()
        }

    def specs(self) -> list[dict[str, Any]]:
        """Each pool with its resolved max_model_len, as the fleet state file records it."""
        return [
            {"name": name, "model": spec.model, "gpu": spec.gpu, "count": spec.count,
             "max_model_len": self._servers[urls[0]].engine.max_model_len}
            for name, (spec, urls) in self._pools.items()
        ]

    async def _start(self, spec: EmulatedPoolSpec, host: str, options: dict[str, Any]) -> None:
        urls: list[str] = []
        self._pools[spec.name] = (spec, urls)
        for i in range(spec.count):
            server = EmulatorServer(spec.gpu, spec.model, max_model_len=spec.max_model_len, **options)
            url = await server.start(host, spec.base_port + i if spec.base_port else 0)
            self._servers[url] = server
            urls.append(url)

    async def stop(self) -> None:
        for server in self._servers.values():
            await server.stop()


@contextlib.asynccontextmanager
async def run_emulated_fleet(
    specs: Sequence[PoolSpecLike], *, time_scale: float = 1.0, host: str = "127.0.0.1", **server_options: Any
) -> AsyncIterator[EmulatedFleet]:
    """Start emulator servers in this event loop; `server_options` go to every EmulatorServer
    (kv_cache_tokens, default_max_tokens, enable_prefix_caching, ...)."""
    fleet = EmulatedFleet()
    try:
        for spec in specs:
            await fleet._start(as_spec(spec), host, {"time_scale": time_scale, **server_options})
        yield fleet
    finally:
        await fleet.stop()


# -- a fleet in a child process ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FleetState:
    """What a fleet process writes once every instance listens (the `fleet up` state file)."""

    pid: int
    pools: dict[str, list[str]]
    specs: list[dict[str, Any]]

    @property
    def urls(self) -> list[str]:
        return [url for urls in self.pools.values() for url in urls]

    def to_pools(self) -> dict[str, Pool]:
        return {
            s["name"]: build_pool(s["name"], s["model"], s["gpu"], self.pools[s["name"]], s["max_model_len"])
            for s in self.specs
        }

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": self.pid, "pools": self.pools, "specs": self.specs}, indent=2))
        tmp.replace(path)  # atomic: a reader never sees half a file

    @classmethod
    def read(cls, path: Path) -> "FleetState":
        data = json.loads(path.read_text())
        return cls(int(data["pid"]), {k: list(v) for k, v in data["pools"].items()}, list(data["specs"]))


def fleet_command(
    *, fleet_file: str | None = None, specs: Sequence[str] = (), time_scale: float = 1.0, state_file: Path | None = None
) -> list[str]:
    """argv of the fleet process (`python -m pools.emulator.serve_fleet`)."""
    argv = [sys.executable, "-m", "pools.emulator.serve_fleet", "--time-scale", str(time_scale)]
    if fleet_file:
        argv.append(fleet_file)
    for spec in specs:
        argv += ["--pool", spec]
    if state_file is not None:
        argv += ["--state-file", str(state_file)]
    return argv


def wait_for_state(process: subprocess.Popen[bytes], state_file: Path, timeout_s: float, log_file: Path | None = None) -> FleetState:
    """Poll (bounded) until the child has written its state file; a child that dies first is an error."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if state_file.exists():
            return FleetState.read(state_file)
        if process.poll() is not None:
            tail = log_file.read_text()[-2000:] if log_file and log_file.exists() else ""
            raise RuntimeError(f"fleet process exited with status {process.returncode} before it was ready\n{tail}")
        time.sleep(0.05)
    raise TimeoutError(f"fleet process not ready after {timeout_s:.0f} s")


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM, wait (bounded), SIGKILL only if it did not stop."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)


@contextlib.contextmanager
def fleet_subprocess(specs: Sequence[PoolSpecLike], *, time_scale: float = 1.0, timeout_s: float = 30.0) -> Iterator[FleetState]:
    """Run an emulated fleet in a child process (free ports) for as long as the block runs;
    for callers that cannot host aiohttp servers in their own loop (Ray tests, sync fixtures)."""
    as_text = [as_spec(s).to_arg() for s in specs]
    with tempfile.TemporaryDirectory(prefix="fleetgate-fleet-") as tmp:
        state_file = Path(tmp) / "fleet.json"
        log_file = Path(tmp) / "fleet.log"
        with open(log_file, "wb") as log:
            process = subprocess.Popen(
                fleet_command(specs=as_text, time_scale=time_scale, state_file=state_file),
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            yield wait_for_state(process, state_file, timeout_s, log_file)
        finally:
            stop_process(process)
