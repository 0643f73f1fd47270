"""`fleetgate` subcommands of the load generator (replay, report, demo) area (see app/cli.py for how areas register)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fleetgate.core.defaults import DEFAULT_TTFT_SLO_MS


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to `commands` and its benchmarks to `bench`."""
    _add_replay(commands)
    _add_report(commands)
    _add_bench(bench)


def _add_replay(commands: argparse._SubParsersAction) -> None:
    from fleetgate.loadgen.traces import FORMATS

    parser = commands.add_parser(
        "replay",
        help="replay a workload trace against an OpenAI-compatible endpoint and write an SLO report",
        description=(
            "Send the requests of a trace at their recorded arrival times (open loop: a slow target never "
            "delays later sends), stream every answer, and write results.jsonl, summary.json and PNG plots "
            "to --out. Ctrl-C stops early and still writes what was measured."
        ),
    )
    parser.add_argument("--trace", required=True, help="trace file or directory; for 'synthetic' a spec like "
                        "'groups=8,prefix_tokens=2048,suffix_tokens=128,output_tokens=64,rate=20,count=500,seed=0'")
    parser.add_argument("--trace-format", required=True, choices=FORMATS, help="format of --trace")
    parser.add_argument("--target", required=True, help="base URL of the endpoint, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", default="", help="model name to send (default: first model in GET /v1/models)")
    parser.add_argument("--rate-scale", type=float, default=1.0, help="speed-up of the trace's arrivals (2 = twice the rate)")
    parser.add_argument("--duration", type=float, default=None, metavar="S", help="replay only the first S seconds (after scaling)")
    parser.add_argument("--max-requests", type=int, default=None, metavar="N", help="replay at most N requests")
    parser.add_argument("--max-gap", type=float, default=None, metavar="S",
                        help="shorten idle gaps between arrivals to at most S seconds (traces stitched from several runs)")
    parser.add_argument("--ttft-slo-ms", type=float, default=DEFAULT_TTFT_SLO_MS, help="TTFT SLO for attainment and goodput")
    parser.add_argument("--tpot-slo-ms", type=float, default=None, help="optional TPOT SLO, also required to count as good")
    parser.add_argument("--concurrency-cap", type=int, default=1000, metavar="N",
                        help="most requests in flight; arrivals beyond it are dropped and counted, never queued")
    parser.add_argument("--api", choices=("auto", "chat", "completions"), default="auto",
                        help="endpoint: auto sends chat traces to /v1/chat/completions and text prompts to /v1/completions")
    parser.add_argument("--time-unit", choices=("s", "ms", "us"), default=None,
                        help="timestamp unit of JSON traces (default: format's own, or detected for openai-jsonl)")
    parser.add_argument("--keep-failed", action="store_true", help="BurstGPT: also replay rows logged as failed")
    parser.add_argument("--no-ignore-eos", action="store_true",
                        help="do not send vLLM's ignore_eos (use against targets that reject unknown fields)")
    parser.add_argument("--request-timeout", type=float, default=600.0, metavar="S", help="per-request time limit")
    parser.add_argument("--label", default=None, help="run name in reports (default: the --out folder name)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/replay-<time>)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.set_defaults(func=_replay)


def _add_report(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "report",
        help="print replay runs side by side (one table, one comparison figure)",
        description="Read the summary.json and results.jsonl of each run folder written by `fleetgate replay`.",
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run folders written by `fleetgate replay --out`")
    parser.add_argument("--figure", type=Path, default=None, help="comparison PNG (default: compare.png beside the first run)")
    parser.set_defaults(func=_report)


def _add_bench(bench: argparse._SubParsersAction) -> None:
    parser = bench.add_parser(
        "loadgen",
        help="requests/s of streaming traffic the replay client sustains on one core (target >= 500)",
        description=(
            "Replays a synthetic trace open loop against a minimal SSE server in a subprocess and reports, "
            "median of --runs: achieved requests/s, send lag, and the client's capacity per CPU core "
            "(requests / client CPU seconds)."
        ),
    )
    parser.add_argument("--rates", default="500,1000,2000", help="offered rates to try, requests/s, comma separated")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each run at each rate")
    parser.add_argument("--runs", type=int, default=3, help="runs per rate (the median is reported)")
    parser.add_argument("--chunks", type=int, default=4, help="SSE token chunks per response")
    parser.set_defaults(func=_bench)


def _replay(args: argparse.Namespace) -> int:
    import asyncio
    import signal
    import sys
    import time

    from fleetgate.loadgen.replay import ReplayConfig, replay_trace, run_event_loop
    from fleetgate.loadgen.report import format_table, write_run
    from fleetgate.loadgen.traces import compress_idle, read_trace

    trace = read_trace(args.trace, args.trace_format, limit=args.max_requests, drop_failed=not args.keep_failed,
                       time_unit=args.time_unit)
    for line, message in trace.errors[:5]:
        print(f"trace line {line}: {message}", file=sys.stderr)
    if trace.errors:
        print(f"{len(trace.errors)} malformed rows skipped", file=sys.stderr)
    if args.max_gap is not None:
        trace = compress_idle(trace, args.max_gap)
    if not trace.requests:
        print("the trace has no requests to replay", file=sys.stderr)
        return 1
    config = ReplayConfig(
        target=args.target, model=args.model, rate_scale=args.rate_scale, duration_s=args.duration,
        max_requests=args.max_requests, concurrency_cap=args.concurrency_cap, api=args.api,
        request_timeout_s=args.request_timeout, ignore_eos=not args.no_ignore_eos,
    )  # fmt: skip
    out_dir = args.out or Path("runs") / time.strftime("replay-%Y%m%d-%H%M%S")

    async def main():
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
        return await replay_trace(trace.requests, config, progress=sys.stderr.isatty(), stop=stop)

    try:
        outcome = run_event_loop(main)
    except RuntimeError as error:  # the target is down or lists no model: say so, no traceback
        print(f"fleetgate replay: {error}", file=sys.stderr)
        return 1
    meta = {
        "label": args.label or out_dir.name, "trace": str(args.trace), "trace_format": args.trace_format,
        "target": args.target, "model": outcome.model, "rate_scale": args.rate_scale,
        "concurrency_cap": args.concurrency_cap, "trace_errors": len(trace.errors),
        "dropped_failed_rows": trace.dropped_failed, "interrupted": outcome.interrupted,
        "wall_s": outcome.wall_s, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }  # fmt: skip
    summary = write_run(out_dir, outcome.results, meta, ttft_slo_ms=args.ttft_slo_ms, tpot_slo_ms=args.tpot_slo_ms,
                        plots=not args.no_plots)
    print(format_table([(meta["label"], summary)]))
    print(f"\nwrote {out_dir}/: results.jsonl, summary.json" + "".join(f", {p}" for p in summary.get("plots", [])))
    if outcome.interrupted:
        print("interrupted: the report covers the requests sent before Ctrl-C")
    return 130 if outcome.interrupted else 0


def _report(args: argparse.Namespace) -> int:
    from fleetgate.loadgen.plots import plot_compare
    from fleetgate.loadgen.report import format_table, load_results, load_summary

    runs = []
    for run_dir in args.runs:
        summary = load_summary(run_dir)
        runs.append((summary.get("run", {}).get("label") or run_dir.name, load_results(run_dir), summary))
    print(format_table([(label, summary) for label, _, summary in runs]))
    figure = plot_compare(args.figure or args.runs[0].resolve().parent / "compare.png", runs)
    print(f"\nfigure: {figure}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from fleetgate.loadgen.bench import run_bench

    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    print(run_bench(rates, seconds=args.seconds, runs=args.runs, chunks=args.chunks))
    return 0
