"""What `fleetgate bench chaos` breaks: emulated instances, Redis, the gateway's Ray Serve replicas and
its watched files, each as a real process or file that a scenario can kill, restart or rewrite.

Every emulated instance runs in its own process (`fleetgate emulate`), so one can be killed with
SIGKILL and started again on the same port while the others serve. The gateway is one
`fleetgate serve` (Ray Serve, two replicas by default) reading a fleet file, a policy and a keys
file from the run folder, with the semantic cache and rate limits kept in a private Redis.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import orjson
import yaml

from fleetgate.loadgen.peers import free_port, router_process, stop_process_group, wait_router_ready
from fleetgate.loadgen.proctree import process_tree
from fleetgate.loadgen.redis_server import RedisServer
from fleetgate.pools.emulator.launcher import wait_healthy

MODEL = "llama-3.1-8b"
POOL = "chat"
REPLICA_TITLE = "ray::ServeReplica:fleetgate:fleetgate"  # a gateway replica's worker process (app:deployment)
REPLICA_HEADER = "x-fleetgate-replica"  # which replica answered (app/replica_header.py)
# Prompts of 1000 tokens or more read and write the semantic cache in Redis; shorter ones skip it. With every
# prompt cached, the trace's prompts of a few hundred tokens (filler text, much alike) waited 5-9 s for their
# first token on a busy 2-core machine: the cache's own subject (docs/cache.md), noise in this bench's SLO.
POLICY = {
    "version": 1,
    "description": "bench chaos: long prompts use the semantic cache (in Redis), short ones do not",
    "topic": {"default_category": "general"},
    "categories": [{"name": "general", "cache": {"enabled": True, "threshold": 0.99, "ttl_s": 600}}],
    "rules": [{"name": "long-prompts-cached", "match": {"prompt_tokens_min": 1000}, "cache": "category"}],
    "defaults": {"cache": "off"},
}
BROKEN_POLICY = "version: 1\nrules: [\n"  # not YAML: the reload must keep the policy it has
LIMITS = {"rpm": 1_000_000, "tpm": 1_000_000_000}  # on, enforced through Redis, never reached


@dataclass(frozen=True, slots=True)
class StackConfig:
    instances: int = 3
    gpu: str = "h100"
    replicas: int = 2
    time_scale: float = 1.0  # emulator wall seconds per emulated second
    ttft_slo_ms: float = 2000.0
    start_timeout_s: float = 300.0


# Gateway settings that make faults show within a scenario's seconds; everything else is the default, or
# FLEETGATE_<SETTING> in the environment (`fleetgate serve` reads it over its config file).
CHAOS_SETTINGS: dict[str, Any] = {
    "first_byte_timeout_s": 2.0,  # a hung instance costs a request 2 s, then it is retried elsewhere
    "policy_poll_s": 0.5,  # the policy, keys and fleet files are re-read this often
}


class Instance:
    """One emulated vLLM instance in its own process, on a port it keeps across restarts."""

    def __init__(self, name: str, config: StackConfig, log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self._config = config
        self._log = log_dir / f"{name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def launch(self) -> None:
        """Start the process (it answers some seconds later: `wait_healthy`)."""
        argv = [sys.executable, "-m", "fleetgate.app.cli", "emulate", "--port", str(self.port), "--gpu",
                self._config.gpu, "--model", MODEL, "--time-scale", str(self._config.time_scale)]
        with open(self._log, "ab") as log:
            self._process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True)

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown (open streams are cut)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None

    def stop(self) -> None:
        if self._process is not None:
            stop_process_group(self._process, timeout_s=5.0)
        self._process = None

    def set_fault(self, mode: str) -> None:
        """The emulator's test knob (POST /admin/fault): ok, hang, reset, slow:N, retry-after:N or a status."""
        request = urllib.request.Request(self.url + "/admin/fault", data=orjson.dumps({"mode": mode}), method="POST",
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()


class Stack:
    """The emulated fleet (plus one spare instance for membership changes), Redis, the files and the gateway."""

    def __init__(self, config: StackConfig, run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir
        self.instances = [Instance(f"{POOL}-{i}", config, run_dir) for i in range(config.instances)]
        self.spare = Instance(f"{POOL}-{config.instances}", config, run_dir)
        self.redis = RedisServer()
        self.fleet_file = run_dir / "fleet.yaml"
        self.policy_file = run_dir / "policy.yaml"
        self.keys_file = run_dir / "keys.yaml"
        self.api_key = ""
        self.url = ""
        self._gateway: subprocess.Popen[bytes] | None = None
        self._replicas_before: set[str] = set()

    def instance(self, name: str) -> Instance:
        return next(i for i in [*self.instances, self.spare] if i.name == name)

    # --- files the gateway watches -------------------------------------------------------------

    def write_fleet(self, members: list[Instance]) -> None:
        pool = {"name": POOL, "model": MODEL, "gpu": self.config.gpu,
                "instances": [{"name": m.name, "url": m.url} for m in members]}
        _replace(self.fleet_file, yaml.safe_dump({"pools": [pool]}, sort_keys=False))

    def write_policy(self, text: str | None = None) -> None:
        """The good policy (`text` None) or any text, replaced atomically as an operator's deploy would."""
        _replace(self.policy_file, text if text is not None else yaml.safe_dump(POLICY, sort_keys=False))

    def _write_keys(self) -> None:
        from fleetgate.router.keys import KeyEntry, KeysFile, new_key, save_keys

        ident, key, digest = new_key(set())
        save_keys(self.keys_file, KeysFile(keys=(KeyEntry(id=ident, hash=digest, tenant="chaos", **LIMITS),)))
        self.api_key = key

    # --- the gateway -----------------------------------------------------------------------------

    def auth_headers(self) -> tuple[tuple[str, str], ...]:
        """What every replayed request sends: the keys file's one key."""
        return (("authorization", f"Bearer {self.api_key}"),)

    def gateway_settings(self) -> dict[str, Any]:
        return {"fleet": str(self.fleet_file), "policy": str(self.policy_file), "keys": str(self.keys_file),
                "redis_url": self.redis.url, "num_replicas": self.config.replicas,
                "ttft_slo_ms": self.config.ttft_slo_ms, **CHAOS_SETTINGS}

    def proxy(self) -> str:
        """Which Ray Serve proxy the gateway runs behind, as `fleetgate serve` reported it."""
        log = (self.run_dir / "gateway.log").read_text(errors="replace")
        return next((name for name in ("HAProxy", "Python") if f"({name} proxy)" in log), "unknown")

    def replica_pids(self) -> list[int]:
        """The gateway replicas' worker processes (Ray Serve's, below the `fleetgate serve` process)."""
        if self._gateway is None:
            return []
        return [p.pid for p in process_tree(self._gateway.pid) if p.title == REPLICA_TITLE]

    def kill_replica(self) -> None:
        """SIGKILL one gateway replica's worker (as an OOM kill would); Ray Serve starts a new one, which
        `wait_new_replica` waits for."""
        pids = self.replica_pids()
        if not pids:
            raise RuntimeError(f"no {REPLICA_TITLE} process below the gateway")
        self._replicas_before = self._answering_replicas()
        os.kill(pids[0], signal.SIGKILL)

    def wait_new_replica(self, timeout_s: float = 120.0) -> None:
        """Until a replica that was not there before the kill answers (Ray Serve routes to it only once ready)."""
        deadline = time.monotonic() + timeout_s
        while not self._answering_replicas(polls=2) - self._replicas_before:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Ray Serve started no new replica within {timeout_s:.0f} s")
            time.sleep(0.1)

    def _answering_replicas(self, polls: int = 12) -> set[str]:
        """The replica ids (`x-fleetgate-replica`) on `polls` answers to /health, spread over the replicas."""
        seen = set()
        for _ in range(polls):
            with contextlib.suppress(urllib.error.URLError, OSError):
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    seen.add(response.headers.get(REPLICA_HEADER, ""))
        return seen - {""}

    def wait_settled(self, timeout_s: float = 60.0) -> None:
        """Every replica running and the fleet healthy again in several answers in a row (so both replicas
        were asked), before the next scenario starts."""
        deadline = time.monotonic() + timeout_s
        good = 0
        while good < 6:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gateway did not settle within {timeout_s:.0f} s")
            healthy = len(self.replica_pids()) == self.config.replicas and self._all_healthy()
            good = good + 1 if healthy else 0
            time.sleep(0.25)

    def _all_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                body = orjson.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return body.get("healthy_instances") == len(self.instances) == body.get("instances")

    @contextlib.contextmanager
    def running(self) -> Iterator["Stack"]:
        """Start everything (instances, Redis, files, `fleetgate serve`); stop it all on exit."""
        with contextlib.ExitStack() as stack:
            everyone = [*self.instances, self.spare]
            for instance in everyone:
                stack.callback(instance.stop)
                instance.launch()
            wait_healthy([i.url for i in everyone], 60.0)
            stack.callback(self.redis.close)
            self.redis.start()
            self.write_fleet(self.instances)
            self.write_policy()
            self._write_keys()
            config_file = self.run_dir / "gateway.yaml"
            config_file.write_text(yaml.safe_dump(self.gateway_settings(), sort_keys=False))
            port = free_port()
            argv = [sys.executable, "-m", "fleetgate.app.cli", "serve", "--config", str(config_file),
                    "--host", "127.0.0.1", "--port", str(port)]
            log = self.run_dir / "gateway.log"
            self._gateway = stack.enter_context(router_process(argv, log))
            self.url = f"http://127.0.0.1:{port}"
            wait_router_ready(self.url, self._gateway, len(self.instances), self.config.start_timeout_s, log)
            self.wait_settled(self.config.start_timeout_s)
            yield self


def _replace(path: Path, text: str) -> None:
    """Write `text` to `path` atomically: a watcher never reads half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)
