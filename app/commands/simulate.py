"""`fleetgate simulate` and `fleetgate bench router` (see app/cli.py for how areas register).
Heavy imports stay inside the handlers so `fleetgate --help` stays instant."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fleetgate.core.defaults import DEFAULT_GPU, DEFAULT_TTFT_SLO_MS

TRACE_FORMATS = ("mooncake", "azure", "burstgpt", "openai-jsonl", "aibrix", "synthetic")
TABLE_COLUMNS = (
    ("router", "router", "{}"),
    ("capacity_rps", "capacity rps", "{:.2f}"),
    ("rate_scale", "rate x", "{:.2f}"),
    ("ttft_p50_ms", "TTFT p50 ms", "{:.0f}"),
    ("ttft_p90_ms", "TTFT p90 ms", "{:.0f}"),
    ("ttft_p99_ms", "TTFT p99 ms", "{:.0f}"),
    ("tpot_p50_ms", "TPOT p50 ms", "{:.1f}"),
    ("slo_attainment", "SLO ok", "{:.3f}"),
    ("goodput_rps", "goodput rps", "{:.2f}"),
    ("prefix_hit_ratio", "prefix hit", "{:.3f}"),
    ("load_imbalance", "imbalance", "{:.2f}"),
    ("fallback_ratio", "fallback", "{:.3f}"),
    ("ttft_estimate_error_p50_ms", "est. error p50 ms", "{:.0f}"),
    ("ttft_estimate_error_p90_ms", "est. error p90 ms", "{:.0f}"),
)


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to `commands` and its benchmarks to `bench`."""
    from fleetgate.router.routing.registry import (
        ROUTER_NAMES,  # light: pure-Python routing modules
    )

    simulate = commands.add_parser(
        "simulate",
        help="replay a trace through a router against emulated vLLM instances in virtual time",
        description="Discrete-event simulation: every request of the trace is routed by the real router object to "
        "one of N emulated vLLM engines (batching, prefix cache, KV memory of the chosen GPU), in virtual time, so "
        "a whole trace takes seconds. Prints TTFT/TPOT percentiles, SLO attainment, prefix-cache hit ratio, load "
        "imbalance and how often affinity was dropped. --capacity searches the highest request rate (trace "
        "compressed in time) at which 90%% of requests meet the TTFT SLO. Example: fleetgate simulate --trace "
        "../shared/traces/mooncake/synthetic_trace.jsonl --trace-format mooncake --router all --instances 8 "
        "--ttft-slo-ms 2000 --capacity",
    )
    simulate.add_argument(
        "--trace", required=True,
        help="trace file (or directory of JSONL files); for --trace-format synthetic a spec such as groups=4,prefix=2048,rate=20,count=2000",
    )
    simulate.add_argument("--trace-format", required=True, choices=TRACE_FORMATS)
    simulate.add_argument(
        "--router", default="dualmap", type=_router_list, metavar="NAME[,NAME...]",
        help=f"routing algorithm, or several comma-separated to compare them in one table; 'all' runs every router. "
        f"Known: {', '.join(ROUTER_NAMES)}. A '+precise' suffix (dualmap+precise) gives the router each engine's exact "
        "prefix cache, as KV events would in the gateway; 'oracle' sees every engine's exact cache and queue and "
        "picks the lowest exact TTFT: the simulator's upper reference (default dualmap)",
    )
    simulate.add_argument("--instances", type=int, default=8, help="emulated instances in the pool (default 8)")
    simulate.add_argument("--gpu", default=DEFAULT_GPU,
                          help="GPU profile of every instance: h100, a100, l4, or one of --fleet's `gpus:` (default %(default)s)")
    simulate.add_argument("--fleet", metavar="FLEET.yaml",
                          help="fleet file whose custom GPU profiles (`gpus:`) --gpu may name")
    simulate.add_argument("--ttft-slo-ms", type=float, default=DEFAULT_TTFT_SLO_MS, help="TTFT SLO in milliseconds (default %(default)s)")
    rate = simulate.add_mutually_exclusive_group()
    rate.add_argument("--rate-scale", type=float, default=1.0, help="replay X times faster than the trace (default 1)")
    rate.add_argument("--capacity", action="store_true", help="search the highest rate with >= 90%% within the SLO")
    simulate.add_argument("--seed", type=int, default=0, help="seed for randomised routers (power-of-two)")
    simulate.add_argument("--limit", type=int, help="replay only the first N requests of the trace")
    simulate.add_argument("--key-blocks", type=int, default=2, help="DualMap/consistent-hash key length in 256-char blocks")
    simulate.add_argument("--json", action="store_true", help="print one JSON object per router instead of a table")
    simulate.set_defaults(func=_simulate)

    bench_router = bench.add_parser(
        "router",
        help="routing decision cost (p50/p99 µs) per router and pool size, and keys moved by scale events",
        description="Time route() of every router on warmed state for pools of 8/64/512 instances and prompts of "
        "1k/32k tokens (median of --runs runs), and the share of keys whose DualMap pair (or single-ring owner) "
        "changes when one instance is added to or removed from pools of 8 and 64, next to the ideal 2/N.",
    )
    bench_router.add_argument("--sizes", default="8,64,512", help="comma-separated pool sizes")
    bench_router.add_argument("--prompt-tokens", default="1024,32768", help="comma-separated prompt sizes in tokens")
    bench_router.add_argument("--decisions", type=int, default=400, help="timed decisions per run (default 400)")
    bench_router.add_argument("--runs", type=int, default=3, help="runs per configuration; the median is shown")
    bench_router.add_argument("--routers", default=",".join(ROUTER_NAMES), help="comma-separated router names")
    bench_router.set_defaults(func=_bench_router)


def _simulate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fleetgate.loadgen.simulate import (
        SimConfig,
        find_capacity,
        ideal_prefix_hit_ratio,
        prepare,
        simulate,
    )
    from fleetgate.loadgen.traces import read_trace
    from fleetgate.pools.config import load_fleet
    from fleetgate.pools.profiles import get_profile

    try:
        profile = get_profile(args.gpu, load_fleet(args.fleet).profiles() if args.fleet else None)
    except ValueError as exc:  # an unknown --gpu, or an invalid fleet file (ConfigError)
        print(exc, file=sys.stderr)
        return 2
    trace = read_trace(args.trace, args.trace_format, limit=args.limit)
    for line, message in trace.errors[:5]:
        print(f"trace line {line}: {message}", file=sys.stderr)
    if not trace.requests:
        print("the trace has no usable requests", file=sys.stderr)
        return 1
    requests = prepare(tqdm(trace.requests, desc="hashing prompts", unit="req", leave=False, file=sys.stderr))
    ideal = ideal_prefix_hit_ratio(requests, profile.max_model_len)
    pooled = ideal_prefix_hit_ratio(requests, profile.max_model_len, cache_tokens=args.instances * profile.kv_cache_tokens)
    routers = args.router
    rows: list[dict[str, Any]] = []
    for name in routers:
        config = SimConfig(
            router=name, instances=args.instances, gpu=profile.name, gpu_profile=profile, ttft_slo_s=args.ttft_slo_ms / 1e3,
            rate_scale=args.rate_scale, seed=args.seed, key_blocks=args.key_blocks,
        )
        if args.capacity:
            with tqdm(desc=f"capacity {name}", unit="run", leave=False, file=sys.stderr) as bar:
                cap = find_capacity(requests, config, on_run=lambda r: bar.update(1) or bar.set_postfix(x=f"{r.rate_scale:.2f}", ok=f"{r.slo_attainment:.3f}"))
            row = {**cap.result.to_dict(), "capacity_rps": cap.capacity_rps, "capacity_runs": cap.runs}
        else:
            row = simulate(requests, config).to_dict()
        row["ideal_prefix_hit_ratio"] = ideal
        row["pooled_cache_hit_ratio"] = pooled
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
    if not args.json:
        bounds = [{"router": "bound: unlimited cache", "prefix_hit_ratio": ideal}, {"router": "bound: pooled LRU", "prefix_hit_ratio": pooled}]
        print(format_table(rows + bounds))
        print(
            "\nbound rows: the prefix hit ratio with an unlimited cache, and with the fleet's KV memory pooled as one "
            f"LRU cache. Rejected (prompt over max_model_len): {rows[0]['rejected']}"
        )
    return 0


def _router_list(text: str) -> tuple[str, ...]:
    """--router: 'all' (the registry's routers) or comma-separated simulator router names."""
    from fleetgate.loadgen.simulate import split_router_name
    from fleetgate.router.routing.registry import ROUTER_NAMES

    if text == "all":
        return ROUTER_NAMES
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    try:
        for name in names:
            split_router_name(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not names:
        raise argparse.ArgumentTypeError("no router named")
    return names


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of simulation results (columns missing or None in every row are left out)."""
    columns = [(key, title, fmt) for key, title, fmt in TABLE_COLUMNS if any(row.get(key) is not None for row in rows)]
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[key]) if row.get(key) is not None else "" for key, _, fmt in columns) + " |")
    return "\n".join(lines)


def _bench_router(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fleetgate.loadgen.bench_router import bench_decisions, bench_remap

    sizes = [int(s) for s in args.sizes.split(",")]
    prompts = [int(s) for s in args.prompt_tokens.split(",")]
    routers = [r.strip() for r in args.routers.split(",") if r.strip()]
    with tqdm(total=len(routers) * len(sizes) * len(prompts), desc="bench router", unit="config", file=sys.stderr) as bar:
        costs = bench_decisions(sizes, prompts, routers, decisions=args.decisions, runs=args.runs, progress=bar)
    header = "| router | " + " | ".join(f"{n} inst, {t // 1024}k tok p50/p99 µs" for n in sizes for t in prompts) + " |"
    print(header)
    print("|" + "---|" * (1 + len(sizes) * len(prompts)))
    for router in routers:
        cells = [f"{c.p50_us:.0f} / {c.p99_us:.0f}" for c in costs if c.router == router]
        print(f"| {router} | " + " | ".join(cells) + " |")
    print("\n| pool | change | DualMap pair moved | one ring owner moved | ideal 2/N |")
    print("|---|---|---|---|---|")
    for remap in bench_remap([n for n in (8, 64) if n > 1]):
        print(f"| {remap.instances} | {remap.change} one | {remap.pair_moved_ratio:.3f} | {remap.owner_moved_ratio:.3f} | {remap.ideal_pair_ratio:.3f} |")
    return 0
