"""`fleetgate bench embedder`: memory per gateway replica and embedding throughput on Ray Serve,
with the model in every replica (before) and in one shared, batched deployment (after).

Three set-ups of the same N replicas on a local Ray, in front of one emulated instance:
- a policy that embeds nothing (keywords only, no semantic cache): no model is loaded anywhere;
- the built-in policy (topic exemplars), `shared_embedder: false`: each replica loads its own model;
- the built-in policy, `shared_embedder: true`: one embedder deployment serves every replica.
Throughput is POST /admin/explain with distinct texts no keyword matches, so each one is one
embedding (classification only: nothing is sent upstream). Memory is the resident set of each
process, read from /proc: the gateway replicas, and the embedder replica where there is one.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from fleetgate.app.embedder_deployment import DEPLOYMENT_NAME
from fleetgate.loadgen.proctree import process_tree

POLICY = Path(__file__).resolve().parents[1] / "policies" / "default.yaml"
GATEWAY_PROCESS = "ray::ServeReplica:fleetgate:fleetgate"  # Ray's process titles: ray::ServeReplica:APP:DEPLOYMENT
EMBEDDER_PROCESS = f"ray::ServeReplica:fleetgate:{DEPLOYMENT_NAME}"


@dataclass(frozen=True, slots=True)
class Setup:
    label: str
    policy: Path
    shared_embedder: bool
    semantic_cache: bool


@dataclass(frozen=True, slots=True)
class Figures:
    label: str
    gateway_rss_mb: list[float]  # one per gateway replica
    embedder_rss_mb: list[float]  # the shared deployment's replicas (none when in process)
    explains_per_s: float  # median of runs; one embedding each where the policy embeds


def keyword_only_policy(directory: Path) -> Path:
    """The built-in policy without its exemplars: topics by keyword only, so nothing needs a model."""
    document = yaml.safe_load(POLICY.read_text())
    for category in document.get("categories", []):
        category.pop("exemplars", None)
    path = directory / "keywords-only.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def replica_memory() -> tuple[list[float], list[float]]:
    """Resident MB of this driver's gateway replicas and embedder replicas (Ray's workers run below
    the driver that started the local Ray; other sessions' Ray processes do not)."""
    processes = process_tree(os.getpid())
    gateway = [p.rss_mb for p in processes if p.title == GATEWAY_PROCESS]
    embedder = [p.rss_mb for p in processes if p.title == EMBEDDER_PROCESS]
    return sorted(gateway), sorted(embedder)


async def explain_rate(url: str, model: str, *, texts: int, concurrency: int, offset: int) -> float:
    """Explains per second of `texts` distinct questions (each one embedding), `concurrency` at a time."""
    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:

        async def one(index: int) -> None:
            body = {"model": model, "messages": [{"role": "user", "content": f"Tell me something about item "
                                                                              f"{offset + index} please"}]}
            async with semaphore, session.post(url + "/admin/explain", json=body) as response:
                response.raise_for_status()
                await response.read()

        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(texts)))
        return texts / (time.monotonic() - started)


async def wait_ready(url: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url + "/v1/models") as response:
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError(f"the gateway at {url} was not ready within {timeout_s:.0f} s")


def measure(setup: Setup, urls: list[str], model: str, *, replicas: int, texts: int, concurrency: int,
            runs: int) -> Figures:
    from fleetgate.app.serve import start_local, stop_local
    from fleetgate.loadgen.peers import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args: dict[str, Any] = {"worker_urls": urls, "model": model, "policy": str(setup.policy), "num_replicas": replicas,
                            "shared_embedder": setup.shared_embedder, "semantic_cache": setup.semantic_cache}
    start_local(args, port=port, num_cpus=2, haproxy=False)
    try:
        asyncio.run(wait_ready(url))
        rates = [asyncio.run(explain_rate(url, model, texts=texts, concurrency=concurrency, offset=run * texts))
                 for run in range(runs + 1)][1:]  # the first run loads the model(s): not counted
        gateway, embedder = replica_memory()
    finally:
        stop_local()
    return Figures(setup.label, gateway, embedder, statistics.median(rates))


def run(*, replicas: int, texts: int, concurrency: int, runs: int) -> list[Figures]:
    from fleetgate.loadgen.peers import free_port
    from fleetgate.pools.emulator.launcher import fleet_subprocess
    from fleetgate.pools.emulator.local import EmulatedPoolSpec

    pool = EmulatedPoolSpec("bench", "llama-3.1-8b", "h100", 1, base_port=free_port())
    with tempfile.TemporaryDirectory(prefix="fg-embedder-bench-") as tmp, \
            fleet_subprocess([pool], time_scale=1.0, timeout_s=120) as fleet:
        setups = [Setup("policy that embeds nothing", keyword_only_policy(Path(tmp)), True, False),
                  Setup("before: a model in every replica", POLICY, False, True),
                  Setup("after: one shared embedder deployment", POLICY, True, True)]
        return [measure(s, fleet.urls, pool.model, replicas=replicas, texts=texts, concurrency=concurrency, runs=runs)
                for s in setups]


def table(figures: list[Figures], replicas: int) -> str:
    lines = [f"| set-up ({replicas} gateway replicas) | RSS per gateway replica MB | embedder deployment MB | "
             "RSS total MB | explains/s |", "|---|---|---|---|---|"]
    for f in figures:
        total = sum(f.gateway_rss_mb) + sum(f.embedder_rss_mb)
        shared = ", ".join(f"{m:.0f}" for m in f.embedder_rss_mb) or "-"
        lines.append(f"| {f.label} | {', '.join(f'{m:.0f}' for m in f.gateway_rss_mb)} | {shared} | {total:.0f} | "
                     f"{f.explains_per_s:.0f} |")
    return "\n".join(lines)
