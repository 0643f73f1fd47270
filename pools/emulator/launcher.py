"""Emulated fleets in a child process: `fleetgate fleet up/down`, and a context manager for
callers that cannot host aiohttp servers in their own event loop (Ray tests, sync fixtures).

The child is `python -m fleetgate.pools.emulator.serve_fleet`; it writes a state file (pid and URLs, JSON)
once every instance listens, which is how the parent knows the fleet is ready.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from fleetgate.pools.config import load_fleet
from fleetgate.pools.emulator.local import (
    PoolSpecLike,
    as_spec,
    build_pool,
    specs_from_fleet,
)
from fleetgate.pools.gpus import GpuProfileConfig
from fleetgate.pools.model import Pool

STATE_FILE = "fleet.json"
LOG_FILE = "fleet.log"


@dataclass(frozen=True, slots=True)
class FleetState:
    """What a fleet process writes once every instance listens."""

    pid: int
    pools: dict[str, list[str]]
    specs: list[dict[str, Any]]

    @property
    def urls(self) -> list[str]:
        return [url for urls in self.pools.values() for url in urls]

    def to_pools(self) -> dict[str, Pool]:
        return {
            s["name"]: build_pool(s["name"], s["model"], s["gpu"], self.pools[s["name"]], s["max_model_len"],
                                  s.get("kv_events", ()),
                                  GpuProfileConfig(**s["gpu_profile"]).to_profile(s["gpu"]) if s.get("gpu_profile") else None)
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
    """argv of the fleet process."""
    argv = [sys.executable, "-m", "fleetgate.pools.emulator.serve_fleet", "--time-scale", str(time_scale)]
    if fleet_file:
        argv.append(fleet_file)
    for spec in specs:
        argv += ["--pool", spec]
    if state_file is not None:
        argv += ["--state-file", str(state_file)]
    return argv


def _wait_for_state(process: subprocess.Popen[bytes], state_file: Path, timeout_s: float, log_file: Path) -> FleetState:
    """Poll (bounded) until the child has written its state file; a child that dies first is an error."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if state_file.exists():
            return FleetState.read(state_file)
        if process.poll() is not None:
            tail = log_file.read_text()[-2000:] if log_file.exists() else ""
            raise RuntimeError(f"fleet process exited with status {process.returncode} before it was ready\n{tail}")
        time.sleep(0.05)
    raise TimeoutError(f"fleet process not ready after {timeout_s:.0f} s (log: {log_file})")


def wait_healthy(urls: Sequence[str], timeout_s: float) -> None:
    """Poll every /health until it answers 200 (bounded)."""
    deadline = time.monotonic() + timeout_s
    for url in urls:
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}/health did not answer within {timeout_s:.0f} s")
            time.sleep(0.05)


def _terminate(pid: int, alive: Callable[[], bool], timeout_s: float) -> None:
    """SIGTERM, wait (bounded) for a clean exit, SIGKILL only if it did not come."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if not alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        deadline = time.monotonic() + timeout_s
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)


def _pid_alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):  # our own child: reap it, or it lingers as a zombie
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def fleet_subprocess(specs: Sequence[PoolSpecLike], *, time_scale: float = 1.0, timeout_s: float = 30.0) -> Iterator[FleetState]:
    """Run an emulated fleet (free ports) in a child process for as long as the block runs."""
    with tempfile.TemporaryDirectory(prefix="fleetgate-fleet-") as tmp:
        state_file, log_file = Path(tmp) / STATE_FILE, Path(tmp) / LOG_FILE
        with open(log_file, "wb") as log:
            process = subprocess.Popen(
                fleet_command(specs=[as_spec(s).to_arg() for s in specs], time_scale=time_scale, state_file=state_file),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        try:
            yield _wait_for_state(process, state_file, timeout_s, log_file)
        finally:
            _terminate(process.pid, lambda: process.poll() is None, 10.0)


def fleet_up(fleet_file: str, *, time_scale: float, state_dir: Path, timeout_s: float | None = None) -> FleetState:
    """Start the fleet file's emulator pools (and `backend: vllm` pools as real vLLM children of the
    same process) in one background process; return once all are healthy. The default wait is 60 s,
    or pools/realvllm.py's READY_TIMEOUT_S when real vLLM has to start."""
    from fleetgate.pools.realvllm import (
        READY_TIMEOUT_S,
        VllmSettings,
        vllm_pools_from_fleet,
    )

    config = load_fleet(fleet_file)  # validate here, so errors reach the terminal
    vllm_pools = vllm_pools_from_fleet(config)
    if not specs_from_fleet(config) and not vllm_pools:
        raise ValueError(f"{fleet_file} has no pools to start (pools with count and base_port)")
    if vllm_pools:
        VllmSettings().check_installed()
    timeout_s = timeout_s or (READY_TIMEOUT_S + 30.0 if vllm_pools else 60.0)
    state_dir.mkdir(parents=True, exist_ok=True)
    state_file, log_file = state_dir / STATE_FILE, state_dir / LOG_FILE
    if state_file.exists():
        running = FleetState.read(state_file)
        if _pid_alive(running.pid):
            raise RuntimeError(f"a fleet is already up (pid {running.pid}); run `fleetgate fleet down` first")
        state_file.unlink()  # left behind by a fleet that died
    with open(log_file, "wb") as log:
        process = subprocess.Popen(
            fleet_command(fleet_file=fleet_file, time_scale=time_scale, state_file=state_file),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    try:
        state = _wait_for_state(process, state_file, timeout_s, log_file)
        wait_healthy(state.urls, timeout_s)
    except BaseException:
        _terminate(process.pid, lambda: process.poll() is None, 10.0)
        raise
    return state


def fleet_down(state_dir: Path, timeout_s: float = 10.0) -> FleetState | None:
    """Stop the fleet recorded in `state_dir` (SIGTERM, then wait); None when none is up."""
    state_file = state_dir / STATE_FILE
    if not state_file.exists():
        return None
    state = FleetState.read(state_file)
    _terminate(state.pid, lambda: _pid_alive(state.pid), timeout_s)
    state_file.unlink(missing_ok=True)
    return state
