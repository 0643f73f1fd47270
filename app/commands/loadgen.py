"""`fleetgate` subcommands of the load generator (replay, report, demo) area (see app/cli.py for how areas register)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fleetgate.core.defaults import DEFAULT_TTFT_SLO_MS


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to `commands` and its benchmarks to `bench`."""
    _add_replay(commands)
    _add_report(commands)
    _add_bench(bench)
    _add_bench_peers(bench)
    _add_bench_replicas(bench)
    _add_bench_chaos(bench)
    _add_bench_soak(bench)


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


def _add_bench_peers(bench: argparse._SubParsersAction) -> None:
    from fleetgate.core.defaults import DEFAULT_GPU
    from fleetgate.loadgen.peers import DEFAULT_ROUTERS, PEERS, ROUTER_KINDS
    from fleetgate.loadgen.traces import FORMATS

    parser = bench.add_parser(
        "peers",
        help="the real sglang-router and vllm-router next to Fleetgate (bare and on Ray Serve), over HTTP, "
             "each in front of a fresh emulated fleet",
        description=(
            "For each router: start a fresh emulated fleet, start the router in front of it, replay the same trace "
            "window open loop, read every instance's prefix-cache counters before and after, stop both. Prints "
            "the `fleetgate report` table, a Markdown table for docs (SLO attainment, TTFT p50/p90/p99, goodput, "
            "the engines' prefix hit ratio, per-instance request share) and writes results.json, compare.png and "
            "one run folder per router to --out. Installs nothing: sglang-router and vllm-router are looked up in "
            "--sglang-venv / --vllm-router-venv or on PATH, and a missing one is a table row that says how to "
            "install it. Times are emulated seconds (wall time / --time-scale). Ctrl-C stops and still reports. "
            "Example: fleetgate bench peers --trace ../shared/traces/mooncake/synthetic_trace.jsonl "
            "--requests 600 --rate-scale 5 --instances 8 --time-scale 2"
        ),
    )
    parser.add_argument("--trace", required=True, help="trace file or directory (agent sessions: a folder of JSONL files)")
    parser.add_argument("--trace-format", choices=FORMATS, default="mooncake",
                        help="format of --trace (default mooncake; agent sessions are openai-jsonl)")
    parser.add_argument("--window-start", type=float, default=0.0, metavar="S",
                        help="start of the window, seconds into the trace (after --max-gap; default 0)")
    window = parser.add_mutually_exclusive_group()
    window.add_argument("--requests", type=int, default=600, metavar="N", help="window length in requests (default 600)")
    window.add_argument("--duration-s", type=float, default=None, metavar="S", help="window length in trace seconds")
    parser.add_argument("--max-gap", type=float, default=None, metavar="S",
                        help="shorten idle gaps in the trace to at most S seconds (agent sessions span 44 h)")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--rate-scale", type=float, default=1.0, help="offered load: trace arrival rate times X (default 1)")
    rate.add_argument("--rates", default=None, metavar="X,Y,...",
                      help="sweep these rate scales (ascending, a fresh fleet each; a router stops at its first rate "
                           "under 90%% within the SLO) and report each router's capacity")
    parser.add_argument("--slo-ttft-ms", type=float, default=DEFAULT_TTFT_SLO_MS, help="TTFT SLO (default %(default)s)")
    fleet = parser.add_mutually_exclusive_group()
    fleet.add_argument("--instances", type=int, default=8, help="emulated instances, one pool (default 8)")
    fleet.add_argument("--fleet", default=None, metavar="FLEET.yaml",
                       help="fleet file with ONE emulator pool (count, gpu, model); ports are chosen freshly per run")
    parser.add_argument("--gpu", default=DEFAULT_GPU, help="GPU profile with --instances (default %(default)s)")
    parser.add_argument("--model", default="llama-3.1-8b", help="model the emulated instances serve (with --instances)")
    parser.add_argument("--time-scale", type=float, default=2.0,
                        help="wall seconds per emulated second: 2 (default) runs the fleet at half speed so router CPU "
                             "on a shared machine does not distort the comparison")
    parser.add_argument("--no-kv-events", dest="kv_events", action="store_false",
                        help="the emulated fleet publishes no KV-cache events, so Fleetgate routes in approximate mode "
                             "(by default they publish, as vLLM does with --kv-events-config; the peers cannot read them)")
    parser.add_argument("--routers", default=",".join(DEFAULT_ROUTERS),
                        help=f"comma-separated, in table order: {', '.join(ROUTER_KINDS)}; KIND:POLICY picks a Fleetgate "
                             "router (fleetgate-bare:cache-aware) or a peer policy (sglang:round_robin) "
                             "(default %(default)s)")
    for peer in PEERS.values():
        parser.add_argument(f"--{peer.name}-venv", default=os.environ.get(peer.venv_env), metavar="DIR",
                            help=f"venv holding bin/{peer.executable} (default ${peer.venv_env}, else PATH); "
                                 f"install: pip install {peer.pip_spec}")
    parser.add_argument("--start-timeout-s", type=float, default=120.0,
                        help="bound on a fleet's or router's start (default 120; 300 for fleetgate-serve)")
    parser.add_argument("--run-timeout-s", type=float, default=900.0,
                        help="bound on one replay, wall seconds; requests still open then count as failed (default 900)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/peers-<time>)")
    parser.set_defaults(func=_bench_peers)


def _add_bench_replicas(bench: argparse._SubParsersAction) -> None:
    from fleetgate.core.defaults import DEFAULT_GPU
    from fleetgate.loadgen.replicas import MODES, ROUTERS

    parser = bench.add_parser(
        "replicas",
        help="do gateway replicas route as one? prefix hit ratio, SLO attainment and per-instance share "
             "at 1, 2, 4 replicas, for DualMap and cache-aware; and gateway requests/s by replica count",
        description=(
            "For each router and replica count: a fresh emulated fleet, that many gateway replicas, the same "
            "trace window at the same offered load spread over them, the engines' prefix-cache counters before and "
            "after. --mode processes (default): bare gateway processes, request i to replica i mod N (a fixed split, "
            "no proxy in the comparison); --mode serve: one `fleetgate serve --replicas N` (Ray Serve picks the "
            "replica). Prints the table (medians of --runs) and, with --throughput-seconds, requests/s of small "
            "requests against a fast fleet per replica count. Example: fleetgate bench replicas --replicas 1,2,4 "
            "--trace ../shared/traces/mooncake/synthetic_trace.jsonl --requests 400 --out runs/replicas.json"
        ),
    )
    parser.add_argument("--replicas", default="1,2,4", help="replica counts, comma separated (default %(default)s)")
    parser.add_argument("--routers", default=",".join(ROUTERS), help="Fleetgate routers (default %(default)s; "
                        "--routers= (none) with --throughput-seconds: the throughput curve only)")
    parser.add_argument("--mode", choices=MODES, default="processes", help="bare processes behind a client-side "
                        "round robin, or Ray Serve replicas (default %(default)s)")
    parser.add_argument("--trace", default="../shared/traces/mooncake/synthetic_trace.jsonl",
                        help="Mooncake-format trace (default %(default)s)")
    parser.add_argument("--window-start", type=float, default=0.0, metavar="S", help="window start, trace seconds")
    parser.add_argument("--requests", type=int, default=400, metavar="N", help="window length (default 400)")
    parser.add_argument("--rate-scale", type=float, default=1.0, help="offered load: trace rate times X (default 1)")
    parser.add_argument("--slo-ttft-ms", type=float, default=DEFAULT_TTFT_SLO_MS, help="TTFT SLO (default %(default)s)")
    parser.add_argument("--instances", type=int, default=8, help="emulated instances, one pool (default 8)")
    parser.add_argument("--gpu", default=DEFAULT_GPU, help="GPU profile (default %(default)s)")
    parser.add_argument("--model", default="llama-3.1-8b", help="model the emulated instances serve")
    parser.add_argument("--time-scale", type=float, default=2.0, help="wall seconds per emulated second "
                        "(default 2: the fleet at half speed, so router CPU on a small machine does not distort it)")
    parser.add_argument("--no-kv-events", dest="kv_events", action="store_false",
                        help="the emulated instances publish no KV events (the routers' approximate mode)")
    parser.add_argument("--runs", type=int, default=1, help="runs per cell; medians are shown (default 1)")
    parser.add_argument("--throughput-seconds", type=float, default=0.0, metavar="S",
                        help="also measure requests/s per replica count, S seconds per run (default 0: skip)")
    parser.add_argument("--throughput-clients", type=int, default=64, help="closed-loop clients (default 64)")
    parser.add_argument("--throughput-runs", type=int, default=3, help="throughput runs per replica count; the "
                        "median is shown (default 3)")
    parser.add_argument("--start-timeout-s", type=float, default=300.0, help="bound on a fleet's or gateway's start")
    parser.add_argument("--run-timeout-s", type=float, default=900.0, help="bound on one replay, wall seconds")
    parser.add_argument("--out", type=Path, default=None, help="write the table and runs as JSON to FILE; run "
                        "folders go beside it (default: runs/replicas-<time>/)")
    parser.set_defaults(func=_bench_replicas)


def _add_bench_soak(bench: argparse._SubParsersAction) -> None:
    from fleetgate.core.defaults import DEFAULT_GPU
    from fleetgate.loadgen.traces import FORMATS

    parser = bench.add_parser(
        "soak",
        help="a long run at a moderate rate through Ray Serve: is the gateway's memory, descriptors, connections "
             "and asyncio tasks flat?",
        description=(
            "Starts an emulated fleet and the gateway on a local Ray Serve (deploy/serve.yaml, the fleet replaced "
            "by the emulated one), replays a trace window in a loop for --duration-s, and every --sample-s reads "
            "each gateway process (Serve replicas, proxy, controller, HAProxy) from /proc: RSS, open file "
            "descriptors, TCP connections; and each replica's asyncio task count from its /metrics. After the load, "
            "once nothing is in flight, one more (drained) sample. Writes samples.csv, soak.json and soak.png to "
            "--out and prints per series the start and end after warm-up (the first 20%% of the samples, at least "
            "2), the growth, and whether it stayed flat (goal: under 5%%). Exit status 0 when every request "
            "completed and every series stayed flat, else 1. Example: fleetgate bench soak --duration-s 1200"
        ),
    )
    parser.add_argument("--duration-s", type=float, default=1200.0, help="length of the load, seconds (default 20 min)")
    parser.add_argument("--sample-s", type=float, default=30.0, help="seconds between samples (default %(default)s)")
    parser.add_argument("--trace", default="../shared/traces/aibrix/8min_up_and_down.jsonl",
                        help="trace replayed in a loop (default: real ShareGPT prompts, %(default)s)")
    parser.add_argument("--trace-format", choices=FORMATS, default="aibrix", help="format of --trace (default aibrix)")
    parser.add_argument("--window-start", type=float, default=0.0, metavar="S", help="window start, trace seconds")
    parser.add_argument("--window-s", type=float, default=120.0, metavar="S", help="window length, trace seconds; "
                        "the window is replayed back to back (default 120: about 2 requests/s of this trace)")
    parser.add_argument("--rate-scale", type=float, default=1.0, help="offered load: the window's rate times X")
    parser.add_argument("--config", default="deploy/serve.yaml", help="Ray Serve settings (the `fleetgate serve "
                        "--config` file); its fleet is replaced by the emulated one (default %(default)s)")
    parser.add_argument("--proxy", choices=("auto", "haproxy", "python"), default="auto",
                        help="Ray Serve's ingress: auto (HAProxy where installed, as `fleetgate serve`), or force one; "
                             "HAProxy binds its stats ports on every interface (default %(default)s)")
    parser.add_argument("--instances", type=int, default=2, help="emulated instances (default %(default)s)")
    parser.add_argument("--gpu", default=DEFAULT_GPU, help="their GPU profile (default %(default)s)")
    parser.add_argument("--model", default="llama-3.1-8b", help="the model they serve (default %(default)s)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="wall seconds per emulated second (default 1)")
    parser.add_argument("--start-timeout-s", type=float, default=300.0, help="bound on the fleet's and gateway's start")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/soak-<time>)")
    parser.set_defaults(func=_bench_soak)


def _bench_soak(args: argparse.Namespace) -> int:
    import sys
    import time

    from fleetgate.app.serve import start_local, stop_local
    from fleetgate.app.settings import ServeCommandSettings, resolve
    from fleetgate.loadgen.peers import free_port, select_window
    from fleetgate.loadgen.proctree import process_tree
    from fleetgate.loadgen.replay import run_event_loop
    from fleetgate.loadgen.soak import SoakConfig, judge, run_soak, verdict_table, warmup, write_outputs
    from fleetgate.loadgen.traces import read_trace
    from fleetgate.pools.emulator.launcher import fleet_subprocess, wait_healthy
    from fleetgate.pools.emulator.local import EmulatedPoolSpec
    from fleetgate.pools.profiles import get_profile

    if args.sample_s <= 0 or args.duration_s < 3 * args.sample_s:
        print("fleetgate bench soak: --duration-s must hold at least three --sample-s intervals (the warm-up takes "
              "two)", file=sys.stderr)
        return 2
    window, _refused = select_window(read_trace(args.trace, args.trace_format).requests, start_s=args.window_start,
                                     count=None, duration_s=args.window_s, max_model_len=get_profile(args.gpu).max_model_len)
    if not window:
        print("fleetgate bench soak: the trace window holds no servable request", file=sys.stderr)
        return 1
    out_dir = args.out or Path("runs") / time.strftime("soak-%Y%m%d-%H%M%S")
    pool = EmulatedPoolSpec("soak", args.model, args.gpu, args.instances)
    with fleet_subprocess([pool], time_scale=args.time_scale, timeout_s=args.start_timeout_s) as fleet:
        port = free_port()
        settings = resolve(ServeCommandSettings, flags={"worker_urls": fleet.urls, "model": args.model, "port": port},
                           environ={}, config=args.config)
        haproxy = start_local(settings.serve_args(), host=settings.host, port=port,
                              haproxy={"auto": None, "haproxy": True, "python": False}[args.proxy])
        try:
            target = f"http://{settings.host}:{port}"
            wait_healthy([target], args.start_timeout_s)
            config = SoakConfig(target=target, duration_s=args.duration_s, sample_s=args.sample_s,
                                replicas=settings.num_replicas, root_pid=os.getpid(), rate_scale=args.rate_scale)
            print(f"soak: {len(window)} requests per lap ({args.trace}, {args.window_s:g} s from {args.window_start:g} "
                  f"s, x{args.rate_scale:g}) for {args.duration_s:g} s through Ray Serve ({settings.num_replicas} "
                  f"replicas, {'HAProxy' if haproxy else 'Python'} proxy), {pool.count} x {pool.gpu}; a sample every "
                  f"{args.sample_s:g} s", flush=True)
            run = run_event_loop(lambda: run_soak(window, config, process_tree, on_sample=lambda s: print(
                f"  {s.t_s:7.0f} s {s.phase}: {len(s.values)} series", file=sys.stderr, flush=True)))
        finally:
            stop_local()
    run.meta.update(proxy="haproxy" if haproxy else "python", trace=str(args.trace), window_s=args.window_s,
                    window_start_s=args.window_start, instances=pool.count, gpu=pool.gpu)
    verdicts = judge(run.samples)
    written = write_outputs(out_dir, run, verdicts, config)
    requests = run.requests()
    print(f"\nrequests: {requests['sent']} sent, {requests['completed']} completed, {requests['failed']} failed "
          f"{requests['failed_by_kind'] or ''}, {requests['dropped']} dropped; drained: {run.drained}")
    print(f"warm-up: {warmup(sum(s.phase == 'load' for s in run.samples))[1]}\n")
    print(verdict_table(verdicts))
    flat = all(v.flat for v in verdicts)
    print(f"\nverdict: {'flat' if flat else 'GROWTH'} (goal: under 5% after warm-up); wrote "
          + ", ".join(str(p) for p in written))
    return 0 if flat and requests["failed"] == 0 else 1


def _add_bench_chaos(bench: argparse._SubParsersAction) -> None:
    from fleetgate.loadgen.chaos import SCENARIO_NAMES

    parser = bench.add_parser(
        "chaos",
        help="break one thing at a time under load (an instance, Redis, a gateway replica, the policy or fleet "
             "file) and count failed, cut and avoidable-failed requests and the time to recover",
        description=(
            "Starts emulated instances (each its own process), Redis, and `fleetgate serve` with two Ray Serve "
            "replicas, the semantic cache and rate limits on. Then, per scenario, replays its own window of a real "
            "trace (open loop, time-compressed) and breaks one thing --pre-s seconds in: an instance killed, hung, "
            "slowed 10x, answering 503 with Retry-After, resetting streams; Redis killed; a gateway replica killed; "
            "the policy file broken; the fleet file changed. Prints per scenario: requests sent, completed, failed "
            "(by status), cut mid-stream (and where), avoidable failures (broken before their first token) and the "
            "seconds from the fault's end until SLO attainment is back at its pre-fault level; writes results.json "
            "and each scenario's results.jsonl to --out. Exit status 1 when a scenario misses a goal. "
            "Example: fleetgate bench chaos --scenarios instance-killed,redis-killed --out runs/chaos"
        ),
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIO_NAMES),
                        help="comma-separated, run in this order (default: all): %(default)s")
    parser.add_argument("--trace", default="../shared/traces/azure_2023/AzureLLMInferenceTrace_conv.csv",
                        help="Azure-format trace (default %(default)s)")
    parser.add_argument("--window-start", type=float, default=60.0, metavar="S",
                        help="first scenario's window starts S trace seconds in; the next ones follow it")
    parser.add_argument("--rate-scale", type=float, default=1.2,
                        help="trace seconds per wall second (default %(default)s: about 6 requests/s)")
    parser.add_argument("--max-output-tokens", type=int, default=64,
                        help="cap on each request's answer length, so a scenario's streams end within seconds")
    parser.add_argument("--pre-s", type=float, default=4.0, help="seconds of load before the fault (default 4)")
    parser.add_argument("--post-s", type=float, default=7.0, help="seconds of load after it ends (default 7)")
    parser.add_argument("--instances", type=int, default=3, help="emulated instances (default 3)")
    parser.add_argument("--replicas", type=int, default=2, help="gateway replicas on Ray Serve (default 2)")
    parser.add_argument("--ttft-slo-ms", type=float, default=2000.0, help="TTFT SLO (default %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/chaos-<time>)")
    parser.set_defaults(func=_bench_chaos)


def _bench_chaos(args: argparse.Namespace) -> int:
    import dataclasses
    import sys
    import time

    from fleetgate.loadgen.chaos import SCENARIOS, WARM_UP_REQUESTS, ChaosConfig, run_chaos, span_s, verdicts
    from fleetgate.loadgen.chaos_report import markdown_table
    from fleetgate.loadgen.chaos_stack import StackConfig
    from fleetgate.loadgen.peers import select_window
    from fleetgate.loadgen.traces import read_trace
    from fleetgate.pools.profiles import get_profile

    by_name = {s.name: s for s in SCENARIOS}
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in by_name]
    if unknown or not names:
        print(f"fleetgate bench chaos: unknown scenario {unknown[0] if unknown else '(none)'!r}; known: "
              f"{', '.join(by_name)}", file=sys.stderr)
        return 2
    scenarios = [by_name[n] for n in names]
    stack = StackConfig(instances=args.instances, replicas=args.replicas, ttft_slo_ms=args.ttft_slo_ms)
    requests = read_trace(args.trace, "azure").requests
    windows, start_s = [], args.window_start
    for scenario in scenarios:
        length_s = span_s(scenario, args.pre_s, args.post_s) * args.rate_scale
        window, _ = select_window(requests, start_s=start_s, count=None, duration_s=length_s,
                                  max_model_len=get_profile(stack.gpu).max_model_len)
        windows.append([dataclasses.replace(r, output_tokens=min(r.output_tokens, args.max_output_tokens))
                        for r in window])
        start_s += length_s
    warm_up, _ = select_window(requests, start_s=start_s, count=WARM_UP_REQUESTS, duration_s=None,
                               max_model_len=get_profile(stack.gpu).max_model_len)  # after every window
    out_dir = args.out or Path("runs") / time.strftime("chaos-%Y%m%d-%H%M%S")
    config = ChaosConfig(stack, windows, warm_up, args.rate_scale, args.pre_s, args.post_s, out_dir)
    print(f"{len(scenarios)} scenarios, {sum(map(len, windows))} requests from {args.trace}; {args.instances} "
          f"emulated {stack.gpu} instances, {args.replicas} gateway replicas; folders in {out_dir}/", flush=True)
    try:
        rows = run_chaos(scenarios, config, on_row=lambda row: print(
            f"  {row['scenario']}: " + ("; ".join(verdicts(row)) or "goals met"), file=sys.stderr, flush=True))
    except (RuntimeError, TimeoutError, OSError) as error:  # the stack did not start: its logs are in out_dir
        print(f"fleetgate bench chaos: the stack did not start ({out_dir}/*.log): {error}"[:2000], file=sys.stderr)
        return 1
    print("\n" + markdown_table(rows) + f"\n\nresults: {out_dir / 'results.json'}")
    return 1 if any(verdicts(row) for row in rows) else 0


def _bench_replicas(args: argparse.Namespace) -> int:
    import sys
    import time

    from fleetgate.loadgen.peers import select_window
    from fleetgate.loadgen.replica_throughput import markdown_table as throughput_table
    from fleetgate.loadgen.replica_throughput import run_throughput
    from fleetgate.loadgen.replicas import (
        ReplicaBenchConfig,
        cells,
        markdown_table,
        run_replica_bench,
        verdict,
        write_results,
    )
    from fleetgate.loadgen.traces import read_trace
    from fleetgate.pools.emulator.local import EmulatedPoolSpec
    from fleetgate.pools.profiles import get_profile

    try:
        counts = [int(x) for x in args.replicas.split(",") if x.strip()]
        routers = [x.strip() for x in args.routers.split(",") if x.strip()]
        if not counts or min(counts) < 1:
            raise ValueError("--replicas needs counts of at least 1, e.g. 1,2,4")
        from fleetgate.router.routing.registry import ROUTER_NAMES

        unknown = [r for r in routers if r not in ROUTER_NAMES]
        if unknown:
            raise ValueError(f"unknown router {unknown[0]!r}; known: {', '.join(ROUTER_NAMES)}")
        pool = EmulatedPoolSpec("bench", args.model, args.gpu, args.instances)
        max_model_len = get_profile(pool.gpu).max_model_len
    except (ValueError, KeyError) as error:
        print(f"fleetgate bench replicas: {error}", file=sys.stderr)
        return 2
    window, refused = select_window(read_trace(args.trace, "mooncake").requests, start_s=args.window_start,
                                    count=args.requests, duration_s=None, max_model_len=max_model_len)
    if not window:
        print("fleetgate bench replicas: the trace window holds no servable request", file=sys.stderr)
        return 1
    out_file = args.out or Path("runs") / time.strftime("replicas-%Y%m%d-%H%M%S") / "results.json"
    config = ReplicaBenchConfig(
        requests=window, pool=pool, time_scale=args.time_scale, ttft_slo_ms=args.slo_ttft_ms,
        rate_scale=args.rate_scale, out_dir=out_file.parent / (out_file.stem + "-runs"), mode=args.mode,
        kv_events=args.kv_events, start_timeout_s=args.start_timeout_s, run_timeout_s=args.run_timeout_s,
        trace_meta={"trace": str(args.trace), "window_start_s": args.window_start,
                    "window_span_s": window[-1].arrival_s, "refused_over_context": refused},
    )  # fmt: skip
    print(f"{len(window)} requests over {window[-1].arrival_s:.0f} trace seconds x{args.rate_scale:g}; "
          f"{pool.count} x {pool.gpu}; {args.mode}; replicas {counts}; routers {routers}; {args.runs} run(s)",
          flush=True)
    rows = run_replica_bench(routers, counts, args.runs, config,
                             on_run=lambda r: print(f"  {r.router} x{r.replicas} run {r.run}: {r.status} "
                                                    f"hit {r.hit_ratio}", file=sys.stderr, flush=True))
    if rows:  # none with --routers=: the throughput curve only
        summary = cells(rows)
        print("\n" + markdown_table(summary) + "\n\n" + verdict(summary))
    points = None
    if args.throughput_seconds > 0:
        points = run_throughput(counts, mode=args.mode, pool=pool, clients=args.throughput_clients,
                                seconds=args.throughput_seconds, runs=args.throughput_runs, out_dir=config.out_dir,
                                start_timeout_s=args.start_timeout_s)
        print(f"\ngateway throughput ({args.throughput_clients} closed-loop clients, 2-token answers, fleet "
              f"1000x faster than {pool.gpu}):\n" + throughput_table(points))
    written = write_results(out_file, rows, config, [p.as_dict() for p in points] if points else None)
    print(f"\nresults: {written}")
    return 0 if all(r.summary is not None for r in rows) else 1


def _bench_peers(args: argparse.Namespace) -> int:
    import sys
    import time

    from tqdm import tqdm

    from fleetgate.loadgen.peers import (
        PEERS,
        BenchConfig,
        RouterSpec,
        RunRow,
        markdown_table,
        run_bench,
        select_window,
    )
    from fleetgate.loadgen.peers import write_results as write_peer_results
    from fleetgate.loadgen.plots import plot_compare
    from fleetgate.loadgen.report import format_table, load_results
    from fleetgate.loadgen.traces import compress_idle, read_trace
    from fleetgate.pools.config import load_fleet
    from fleetgate.pools.emulator.local import EmulatedPoolSpec, specs_from_fleet
    from fleetgate.pools.profiles import get_profile

    try:
        specs = [RouterSpec.parse(text) for text in args.routers.split(",") if text.strip()]
        rates = [float(x) for x in args.rates.split(",")] if args.rates else [args.rate_scale]
        if args.fleet:
            pools = specs_from_fleet(load_fleet(args.fleet))
            if len(pools) != 1:
                raise ValueError(f"{args.fleet} must have exactly one emulator pool (it has {len(pools)})")
            pool = pools[0]
        else:
            pool = EmulatedPoolSpec("bench", args.model, args.gpu, args.instances)
        max_model_len = pool.max_model_len or get_profile(pool.gpu).max_model_len
    except (ValueError, KeyError) as error:
        print(f"fleetgate bench peers: {error}", file=sys.stderr)
        return 2
    trace = read_trace(args.trace, args.trace_format)
    if args.max_gap is not None:
        trace = compress_idle(trace, args.max_gap)
    window, refused = select_window(trace.requests, start_s=args.window_start,
                                    count=None if args.duration_s else args.requests, duration_s=args.duration_s,
                                    max_model_len=max_model_len)
    if not window:
        print("fleetgate bench peers: the trace window holds no servable request", file=sys.stderr)
        return 1
    out_dir = args.out or Path("runs") / time.strftime("peers-%Y%m%d-%H%M%S")
    trace_meta = {"trace": str(args.trace), "trace_format": args.trace_format, "window_start_s": args.window_start,
                  "window_span_s": window[-1].arrival_s, "refused_over_context": refused, "max_gap_s": args.max_gap}
    config = BenchConfig(
        requests=window, pool=pool, time_scale=args.time_scale, ttft_slo_ms=args.slo_ttft_ms, out_dir=out_dir,
        start_timeout_s=args.start_timeout_s, serve_start_timeout_s=max(args.start_timeout_s, 300.0),
        run_timeout_s=args.run_timeout_s, venvs={name: getattr(args, f"{name.replace('-', '_')}_venv") for name in PEERS},
        trace_meta=trace_meta, kv_events=args.kv_events,
    )  # fmt: skip
    print(f"{len(window)} requests over {window[-1].arrival_s:.0f} trace seconds from {args.trace} "
          f"({refused} refused for everyone: prompt >= {max_model_len} tokens); {pool.count} x {pool.gpu}, "
          f"time scale {args.time_scale:g}; {len(specs)} routers x {len(rates)} rates; folders in {out_dir}/", flush=True)
    with tqdm(total=len(specs) * len(rates), desc="bench peers", unit="run", file=sys.stderr) as bar:
        def on_run(row: RunRow) -> None:
            bar.update()
            bar.set_postfix_str(f"{row.label} x{row.rate_scale:g}: {row.status[:40]}")

        rows, interrupted = run_bench(specs, rates, config, on_run=on_run)
    sweep = len(rates) > 1
    ran = [row for row in rows if row.ran]
    if ran:
        labelled = [(f"{r.label}@x{r.rate_scale:g}" if sweep else r.label, r) for r in ran]
        print(format_table([(label, r.summary) for label, r in labelled]))
        runs = [(label, load_results(r.run_dir), r.summary) for label, r in labelled]
        print(f"\nfigure: {plot_compare(out_dir / 'compare.png', runs)}")
    print("\n" + markdown_table(rows, sweep))
    print(f"\nresults: {write_peer_results(out_dir / 'results.json', rows, config, sweep)}")
    if interrupted:
        print("interrupted: the report covers the runs finished before Ctrl-C")
    return 130 if interrupted else 0


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
