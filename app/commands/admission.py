"""`fleetgate bench admission`: priority and fairness under overload with admission on and off, and the
cost of admission when nothing waits."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    parser = bench.add_parser(
        "admission",
        help="admission under overload: interactive SLO and batch goodput, fairness, fast-path cost",
        description=(
            "Starts an emulated fleet (2 L4s by default) and a bare gateway for each run, and replays tenants "
            "at once, each with its own API key; a generated policy gives each tenant its priority and TTFT "
            "SLO. 'priority': an interactive tenant (high priority, real ShareGPT chat prompts from --chat-trace, "
            "SLO 2 s) and a batch tenant (low priority, 3,000-token prompts, SLO 30 s). 'fairness': two "
            "equal-priority tenants, one sending 5x the other's load. Each scenario first probes the fleet's "
            "capacity for its mix (a burst that saturates a fresh fleet, admission off: tokens/s served) and "
            "sets the rates to offer 1.5x it (times --load); then runs with admission off, then on, and prints "
            "the capacity, the offered ratio and per tenant: SLO met, TTFT, tokens served, and how every request "
            "ended. 'fast-path': the cost of one admission when nothing waits (median of 5 runs of 20,000)."),
    )
    parser.add_argument("--scenarios", default="priority,fairness,fast-path",
                        help="comma separated: priority, fairness, fast-path")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of arrivals per run (bounded)")
    parser.add_argument("--load", type=float, default=1.0, help="scales every tenant's rate (1.0: offers 1.5x the measured capacity)")
    parser.add_argument("--instances", type=int, default=2, help="emulated L4 instances in the fleet")
    parser.add_argument("--timeout", type=float, default=300.0, help="wall seconds a run may take before the "
                        "requests still open count as failed")
    parser.add_argument("--chat-trace", type=Path, default=CHAT_TRACE, help="AIBrix-format trace whose ShareGPT "
                        "prompts the interactive tenant sends, in timestamp order (those that do not fit the context "
                        "are skipped)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the arrivals and prompts")
    parser.add_argument("--out", type=Path, default=Path("bench-admission"), help="folder for fleet, policy, "
                        "gateway logs and results.json")
    parser.set_defaults(func=_bench_admission)


CHAT_TRACE = Path(__file__).resolve().parents[3] / "shared" / "traces" / "aibrix" / "8min_up_and_down.jsonl"


def _bench_admission(args: argparse.Namespace) -> int:
    from fleetgate.loadgen.admission_bench import (
        GPU,
        SCENARIOS,
        ChatPrompts,
        chat_prompts,
        fast_path_us,
        measure_load,
        run_scenario,
    )
    from fleetgate.pools.profiles import get_profile

    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    known = {"priority", "fairness", "fast-path"}
    if unknown := set(chosen) - known:
        print(f"unknown scenario(s) {', '.join(sorted(unknown))}; expected {', '.join(sorted(known))}")
        return 2
    report: dict[str, Any] = {}
    chat = ChatPrompts((), 0)  # read when a scenario needs it
    for name in chosen:
        if name == "fast-path":
            p50, p99 = fast_path_us()
            report[name] = {"p50_us": p50, "p99_us": p99}
            print(f"\nadmission fast path (nothing waits), median of 5 runs: p50 {p50:.1f} µs, p99 {p99:.1f} µs "
                  "(goal: p99 < 50 µs)")
            continue
        tenants = SCENARIOS[name]
        if not chat.requests and any(t.prompt_tokens is None for t in tenants):
            chat = chat_prompts(args.chat_trace, get_profile(GPU).max_model_len)
            print(f"chat prompts: {len(chat.requests)} of {len(chat.requests) + chat.skipped} from "
                  f"{args.chat_trace.name} fit the {GPU} context ({chat.skipped} skipped)")
        load = measure_load(tenants, load=args.load, chat=chat, instances=args.instances,
                            out_dir=args.out / f"{name}-probe", seed=args.seed, timeout_s=args.timeout)
        rows = {mode: run_scenario(tenants, load.rates_rps, admission=mode == "on", duration_s=args.seconds,
                                   chat=chat, instances=args.instances, out_dir=args.out / f"{name}-{mode}",
                                   seed=args.seed, timeout_s=args.timeout) for mode in ("off", "on")}
        rates = ", ".join(f"{t.name} {r:.2f} rps" for t, r in zip(tenants, load.rates_rps))
        report[name] = {"capacity_tok_s": load.capacity_tok_s, "offered_tok_s": load.offered_tok_s,
                        "offered_ratio": load.ratio, "rates_rps": dict(zip((t.name for t in tenants), load.rates_rps)),
                        "runs": rows}
        print(f"\n{name}: {args.seconds:g} s of arrivals, {args.instances} emulated {GPU.upper()}; measured capacity "
              f"{load.capacity_tok_s:.0f} tok/s (prompt + completion, saturated, admission off); offered "
              f"{load.offered_tok_s:.0f} tok/s = {load.ratio:.2f}x capacity ({rates}; {load.mean_tokens:.0f} "
              "tokens a request)")
        print("| admission | tenant | sent | completed | refused/failed | SLO met | TTFT p50/p99 ms | tokens served "
              "(share) | goodput tok/s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for mode, per_tenant in rows.items():
            total = sum(r["served_tokens"] for r in per_tenant) or 1
            for r in per_tenant:
                failed = ", ".join(f"{n}x {k}" for k, n in sorted(r["failed"].items())) or "0"
                ttft = "/".join("-" if v is None else f"{v:.0f}" for v in (r["ttft_p50_ms"], r["ttft_p99_ms"]))
                print(f"| {mode} | {r['tenant']} | {r['sent']} | {r['completed']} | {failed} | {r['slo_met']:.1%} | "
                      f"{ttft} | {r['served_tokens']} ({r['served_tokens'] / total:.0%}) | {r['goodput_tok_s']:.1f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    return 0
