"""Real prefix-cache hit ratio behind the gateway: round-robin against prefix affinity (DualMap).

    python deploy/vllm-cpu/cache_check.py                      # starts 2 real vLLM instances itself
    python deploy/vllm-cpu/cache_check.py --max-requests 60 --routers round-robin,dualmap,least-loaded

Replays a slice of the agent-session trace (../shared/traces/agent_sessions, real prompts whose
turns share long prefixes) through `fleetgate serve --bare --router R` to two real vLLM instances,
once per router, each from cold caches (and once on a single instance: the bound), and prints
vLLM's own hit ratio (delta prefix_cache_hits_total / delta prefix_cache_queries_total) side by
side. Run it with the
project's Python (.venv); vLLM comes from deploy/vllm-cpu/setup.sh. About 5 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from fleetgate.loadgen.realcache import (
    DEV_MODE_ENV,
    format_table,
    measure_router,
    select_slice,
)
from fleetgate.pools.realvllm import REPO, VllmNotInstalled, VllmSettings, run_vllm

DEFAULT_TRACE = REPO.parent / "shared" / "traces" / "agent_sessions"


def free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def main(argv: list[str] | None = None) -> int:
    defaults = VllmSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE, help="openai-jsonl trace file or folder")
    parser.add_argument("--max-requests", type=int, default=80, help="requests in the slice (default 80)")
    parser.add_argument("--max-gap", type=float, default=1.0, help="idle gaps shortened to this many seconds")
    parser.add_argument("--output-tokens", type=int, default=64, help="cap on each request's output tokens")
    parser.add_argument("--routers", default="round-robin,dualmap", help="comma-separated routers to compare")
    parser.add_argument("--no-bound", dest="bound", action="store_false",
                        help="skip the bound row: the slice on one instance, where every shared prefix is found")
    parser.add_argument("--urls", nargs="+", help="use these running vLLM instances (started with "
                        "VLLM_SERVER_DEV_MODE=1) instead of starting two")
    parser.add_argument("--venv", type=Path, default=defaults.venv)
    parser.add_argument("--model-dir", type=Path, default=defaults.model_dir)
    parser.add_argument("--max-model-len", type=int, default=defaults.max_model_len)
    args = parser.parse_args(argv)

    settings = VllmSettings(venv=args.venv, model_dir=args.model_dir, max_model_len=args.max_model_len,
                            extra_env=DEV_MODE_ENV)
    try:
        settings.check_installed()
        settings.ensure_model()
    except VllmNotInstalled as exc:
        print(exc, file=sys.stderr)
        return 1
    chosen = select_slice(args.trace, settings.model_dir, max_requests=args.max_requests, max_gap_s=args.max_gap,
                          output_cap_tokens=args.output_tokens, max_model_len=args.max_model_len)
    tokens = chosen.prompt_tokens
    print(f"slice: {len(chosen.requests)} requests of {chosen.sessions} sessions from {args.trace}, in arrival order; "
          f"{chosen.dropped_too_long} longer turns skipped (prompt + output over {args.max_model_len} tokens); "
          f"prompts {min(tokens)}-{max(tokens)} tokens (tiny tokenizer), {sum(tokens):,} in all; outputs capped at "
          f"{args.output_tokens}; idle gaps cut to {args.max_gap:g} s; span {chosen.requests[-1].arrival_s:.0f} s",
          flush=True)

    async def compare(urls: list[str]) -> list:
        runs = []
        for router in args.routers.split(","):
            runs.append(await measure_router(router, urls, settings.served_model_name, chosen.requests,
                                             port=free_ports(1)[0], max_model_len=args.max_model_len,
                                             progress=sys.stderr.isatty()))
            print(f"  {router}: hit ratio {runs[-1].hit_ratio:.3f}", flush=True)
        if args.bound:  # every request on one instance: the most any routing over these caches can hit
            runs.append(await measure_router("round-robin", urls[:1], settings.served_model_name, chosen.requests,
                                             port=free_ports(1)[0], max_model_len=args.max_model_len,
                                             progress=sys.stderr.isatty(), label="one instance (bound)"))
        return runs

    if args.urls:
        runs = asyncio.run(compare(args.urls))
    else:
        print("starting 2 real vLLM instances (about a minute)...", flush=True)
        with run_vllm(settings, free_ports(2)) as fleet:
            runs = asyncio.run(compare(fleet.urls))
    print()
    print("real vLLM prefix cache (vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total, deltas per run)")
    print(format_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
