"""`fleetgate demo`: the whole product on an emulated heterogeneous fleet, in about two minutes.

One run per contender over the same bundled slice of the Mooncake trace, each on a fresh fleet
(so no run inherits another's warm prefix caches), through the gateway on Ray Serve. Every
contender gets the same pools and the same policy (workload classes -> pools, long prompts to the
long-context pool): only the routing inside a pool differs, so the comparison is about routing.
1. `round-robin`: the policy with every router set to round-robin;
2. `cache-aware`: the policy with SGLang's cache-aware router (sglang-router 0.3.2's rules);
3. `fleetgate`: the policy as written (DualMap).
`--plain-lb` adds `plain LB (no gating)`: round-robin over one flat pool of every instance, what a
load balancer in front of the fleet does; it sends long prompts to short-context GPUs, whose 400s
say nothing about routing, so it is an extra column, not the baseline.
The fleet runs `time_scale` times real time; request times in the report are converted back to
emulated seconds, so they read as they would on real GPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from fleetgate.core.defaults import DEFAULT_TTFT_SLO_MS
from fleetgate.loadgen.replay import (
    ReplayConfig,
    replay_trace,
    run_event_loop,
    to_emulated_time,
)
from fleetgate.loadgen.report import format_table, write_run
from fleetgate.loadgen.traces import read_trace
from fleetgate.policies.load import BUILTIN_POLICY
from fleetgate.pools.config import (
    FleetConfig,
    InstanceConfig,
    PoolConfig,
    dump_fleet,
    fleet_from_pools,
)
from fleetgate.pools.emulator.launcher import fleet_subprocess
from fleetgate.pools.model import Pool

MODEL = "llama-3.1-8b"
DEMO_SERVE = {"num_replicas": 1, "graceful_shutdown_timeout_s": 1.0}  # nothing to drain between the runs
DEMO_POOLS = (("chat-small", MODEL, "l4", 2), ("general", MODEL, "a100", 2), ("long-context", MODEL, "h100", 2))


def flat_pool(pools: dict[str, Pool]) -> FleetConfig:
    """Every instance in one pool, each keeping its own GPU: the round-robin baseline's view."""
    endpoints = [e for pool in pools.values() for e in pool.endpoints]
    return FleetConfig(pools=[PoolConfig(
        name="all", model=MODEL, gpu=endpoints[0].gpu,
        max_context_tokens=max(e.max_context_tokens for e in endpoints),
        instances=[InstanceConfig(url=e.url, name=e.name, gpu=e.gpu) for e in endpoints],
    )])


async def _wait_ready(url: str, instances: int, timeout_s: float = 120) -> None:
    """Until the gateway answers /health with every instance healthy."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url + "/health") as response:
                    if response.status == 200 and (await response.json())["healthy_instances"] == instances:
                        return
            except (aiohttp.ClientError, OSError, KeyError):
                pass
            await asyncio.sleep(0.25)
    raise RuntimeError(f"the gateway at {url} did not see all {instances} instances healthy in {timeout_s:.0f}s")


@dataclasses.dataclass(frozen=True)
class Contender:
    """One run of the demo: its column label, its report folder, and how the gateway routes."""

    label: str
    folder: str
    router: str | None  # forced into every rule of the policy; None: the policy's own routers
    gated: bool = True  # False: no policy, one flat pool of every instance


CONTENDERS = (
    Contender("round-robin", "round-robin", "round-robin"),
    Contender("cache-aware", "cache-aware", "cache-aware"),
    Contender("fleetgate", "fleetgate", None),
)
PLAIN_LB = Contender("plain LB (no gating)", "plain-lb", "round-robin", gated=False)


def with_router(policy_path: Path, router: str) -> str:
    """The policy's YAML with `router` in its defaults and in every rule that names one, and a
    relative `fleet:` made absolute (the copy lives elsewhere). Everything else is unchanged, so
    the pools each request may use are the same for every contender."""
    doc = yaml.safe_load(policy_path.read_text())
    doc.setdefault("defaults", {})["router"] = router
    for rule in doc.get("rules") or []:
        if "router" in rule:
            rule["router"] = router
    if isinstance(doc.get("fleet"), str) and not Path(doc["fleet"]).is_absolute():
        doc["fleet"] = str((policy_path.parent / doc["fleet"]).resolve())
    return yaml.safe_dump(doc, sort_keys=False)


def gateway_settings(contender: Contender, pools: dict[str, Pool], policy: Path, out_dir: Path) -> dict[str, Any]:
    """The gateway settings of one run; writes the fleet (and forced-router policy) files it names."""
    fleet_file = out_dir / f"{contender.folder}-fleet.yaml"
    fleet_file.write_text(dump_fleet(fleet_from_pools(pools) if contender.gated else flat_pool(pools)))
    settings: dict[str, Any] = {"fleet": str(fleet_file), **DEMO_SERVE}
    if not contender.gated:
        return {**settings, "router": contender.router}
    if contender.router is not None:
        forced = out_dir / f"{contender.folder}-policy.yaml"
        forced.write_text(with_router(policy, contender.router))
        policy = forced
    return {**settings, "policy": str(policy)}


def run(args: argparse.Namespace) -> int:
    from ray import serve

    from fleetgate.app.serve import build_app, start_local, stop_local

    out_dir: Path = args.out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    trace_path = resources.files("fleetgate.loadgen") / "data" / "mooncake_demo.jsonl"
    trace = read_trace(Path(str(trace_path)), "mooncake", limit=args.max_requests)
    policy = Path(args.policy) if args.policy else BUILTIN_POLICY
    contenders = CONTENDERS + ((PLAIN_LB,) if args.plain_lb else ())
    url = f"http://127.0.0.1:{args.port}"
    print(f"Fleetgate demo: {len(trace.requests)} Mooncake requests, fleet of "
          + ", ".join(f"{c}x {g.upper()} ({p})" for p, _, g, c in DEMO_POOLS)
          + f", {1 / args.time_scale:.0f}x faster than real time. Same pools and policy for "
          + ", ".join(c.label for c in CONTENDERS) + f": only the routing differs. Reports in {out_dir}/", flush=True)
    runs: list[tuple[Contender, dict[str, Any]]] = []
    started = False
    try:
        for contender in contenders:
            with fleet_subprocess(DEMO_POOLS, time_scale=args.time_scale) as fleet:
                settings = gateway_settings(contender, fleet.to_pools(), policy, out_dir)
                if not started:
                    start_local(settings, port=args.port)
                    started = True
                else:
                    serve.run(build_app(settings), name="fleetgate", route_prefix="/", blocking=False)
                asyncio.run(_wait_ready(url, len(fleet.urls)))
                print(f"\n[{contender.label}] gateway ready on Ray Serve, replaying...", flush=True)
                config = ReplayConfig(target=url, model=MODEL, rate_scale=args.load / args.time_scale)
                outcome = run_event_loop(lambda: replay_trace(trace.requests, config, progress=sys.stderr.isatty()))
                results = [to_emulated_time(r, args.time_scale) for r in outcome.results]
                meta = {"label": contender.label, "trace": "mooncake_demo.jsonl", "time_scale": args.time_scale,
                        "load": args.load, "settings": settings}
                runs.append((contender, write_run(out_dir / contender.folder, results, meta, ttft_slo_ms=args.ttft_slo_ms)))
    finally:
        if started:
            stop_local()
    _print_report(runs, out_dir)
    return 0


def _print_report(runs: list[tuple[Contender, dict[str, Any]]], out_dir: Path) -> None:
    from fleetgate.loadgen.plots import plot_compare
    from fleetgate.loadgen.report import load_results

    figure = plot_compare(out_dir / "compare.png", [(c.label, load_results(out_dir / c.folder), summary)
                                                     for c, summary in runs])
    print("\n" + format_table([(c.label, summary) for c, summary in runs]))
    print(f"\nPlots: {figure} (side by side), and per run: "
          + ", ".join(f"{out_dir / c.folder}/" for c, _ in runs))


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add `fleetgate demo`."""
    demo = commands.add_parser(
        "demo",
        help="the whole product in ~4 minutes: emulated fleet, gateway on Ray Serve, trace replay, report",
        description=(
            "Start an emulated heterogeneous vLLM fleet (2x L4, 2x A100, 2x H100), put the gateway in front of "
            "it on Ray Serve, and replay a bundled slice of the Mooncake trace three times, each on a fresh fleet "
            "with the same pools and the same policy (long prompts to the long-context pool): routing inside a "
            "pool by round-robin, by SGLang's cache-aware router, and by Fleetgate's DualMap. Prints the reports "
            "side by side. Stops everything it started."
        ),
    )
    demo.add_argument("--time-scale", type=float, default=0.5,
                      help="emulated fleet speed: 0.5 (default) runs twice as fast as real time")
    demo.add_argument("--load", type=float, default=1.0,
                      help="trace speed-up in emulated time: 2 offers twice the trace's request rate (default 1)")
    demo.add_argument("--ttft-slo-ms", type=float, default=DEFAULT_TTFT_SLO_MS, help="TTFT SLO of the report (default %(default)s)")
    demo.add_argument("--max-requests", type=int, default=None, help="replay only the first N requests")
    demo.add_argument("--policy", help="policy file every run uses (default: the built-in policy); the round-robin "
                      "and cache-aware runs replace its routers, the fleetgate run keeps them")
    demo.add_argument("--plain-lb", action="store_true",
                      help="add a fourth run, 'plain LB (no gating)': round-robin over every instance as one pool, "
                      "as a load balancer in front of the fleet would (long prompts reach short-context GPUs)")
    demo.add_argument("--port", type=int, default=8000, help="gateway port on 127.0.0.1 (default 8000)")
    demo.add_argument("--out", type=Path, help="report directory (default runs/demo-DATE)")
    demo.set_defaults(func=run)
