"""`fleetgate serve` (the gateway on Ray Serve, or bare) and `fleetgate bench overhead`.

Its flags are generated from the settings model (app/settings.py), so every setting has one and
its help is the setting's own description.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from pydantic import BaseModel, ValidationError

from fleetgate.app.settings import (
    ENV_PREFIX,
    GatewaySettings,
    ServeCommandSettings,
    is_sequence,
    resolve,
    scalar_type,
)
from fleetgate.core.yamlconf import ConfigError

if TYPE_CHECKING:
    import uvicorn

FLAG_ALIASES: dict[str, tuple[str, ...]] = {"num_replicas": ("--replicas",)}
"""Older spellings kept working next to the generated `--kebab-case` flag."""

DESCRIPTION = (
    "Run the Fleetgate gateway. Point OpenAI clients at http://HOST:PORT/v1. Give the fleet as a fleet "
    "file (--fleet) or, for a quick start, a list of vLLM URLs serving one model (--worker-urls ... --model NAME). "
    "Each setting is taken from the first of: its flag; the environment variable FLEETGATE_<SETTING> "
    "(e.g. FLEETGATE_ROUTER=round-robin; a list separated by spaces); the --config file; its default. "
    "A fleet named by one of these (fleet or worker_urls) replaces the fleet of those after it."
)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_setting_flags(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """One flag per field of `model`, absent from the parsed namespace unless given on the line."""
    group = parser.add_argument_group("settings", "flag > FLEETGATE_<SETTING> > --config file > default")
    for name, field in model.model_fields.items():
        shown = "none" if field.default in (None, ()) else field.default
        options: dict[str, Any] = {
            "dest": name, "default": argparse.SUPPRESS,
            "help": f"{field.description} (default: {shown}; {ENV_PREFIX}{name.upper()})".replace("%", "%%"),
        }
        kind = scalar_type(field)
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = kind
            if is_sequence(field):
                options["nargs"] = "+"
        group.add_argument(flag(name), *FLAG_ALIASES.get(name, ()), **options)


def command_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> ServeCommandSettings:
    """`fleetgate serve`'s settings from its parsed command line, `environ` and its --config file."""
    flags = {name: getattr(args, name) for name in ServeCommandSettings.model_fields if hasattr(args, name)}
    return resolve(ServeCommandSettings, flags=flags, environ=environ, config=args.config)


def describe(error: ValidationError) -> str:
    """One line per problem, naming the setting as its field, flag and environment variable."""
    lines = []
    for problem in error.errors():
        name = str(problem["loc"][0]) if problem["loc"] else ""
        if name in ServeCommandSettings.model_fields:
            name += f" ({flag(name)}, {ENV_PREFIX}{name.upper()})"
        where = f"{name}: " if name else ""
        lines.append(f"  {where}{problem['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def _wait_for_ctrl_c() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()


def listener_config(app: Any, settings: ServeCommandSettings) -> uvicorn.Config:
    """uvicorn's config for the bare server, with the listener limits of the settings (connection cap,
    keep-alive timeout, largest request head): uvicorn's defaults have no cap and take 8 MB heads. The
    head limit rides on h11's setting, which `HeadLimitedHttpTools` reads."""
    import uvicorn

    from fleetgate.app.head_limit import HeadLimitedHttpTools

    return uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", http=HeadLimitedHttpTools,
                          limit_concurrency=settings.max_connections,
                          timeout_keep_alive=settings.keep_alive_timeout_s,
                          h11_max_incomplete_event_size=settings.max_header_bytes)


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = command_settings(args, os.environ)
        settings.fleet_config()  # a broken fleet file fails here, not in every replica
    except ConfigError as error:
        print(f"fleetgate serve: {error}", file=sys.stderr)
        return 2
    except ValidationError as error:
        print(f"fleetgate serve: invalid settings:\n{describe(error)}", file=sys.stderr)
        return 2
    if args.bare:
        from fleetgate.app.compose import build_asgi_app

        from fleetgate.app.drain import DrainingServer

        app = build_asgi_app(settings.narrowed(GatewaySettings))
        config = listener_config(app, settings)
        DrainingServer(config, app.state.drain, settings.graceful_shutdown_timeout_s).run()
        return 0
    from fleetgate.app.fate import PortInUseError
    from fleetgate.app.serve import start_local, stop_local

    try:
        haproxy = start_local(settings.serve_args(), host=settings.host, port=settings.port)
    except PortInUseError as error:
        print(f"fleetgate serve: {error}", file=sys.stderr)
        return 1
    print(f"Fleetgate on Ray Serve at http://{settings.host}:{settings.port}/v1 "
          f"({'HAProxy' if haproxy else 'Python'} proxy); Ctrl-C stops it.", flush=True)
    if not haproxy:
        print(python_proxy_warning(), file=sys.stderr, flush=True)
    try:
        _wait_for_ctrl_c()
    finally:
        stop_local()
    return 0


PYTHON_PROXY_COST = (
    "Measured with `fleetgate bench ray-path` (docs/scale-out.md, \"The Ray Serve path\"; 8 emulated H100s, "
    "~12k-token prompts, streamed, 2 s TTFT SLO, a shared 2-core machine): the Python proxy relays every token of "
    "every stream itself, so at 13-54 requests/s answers streamed 1.5-2.2x slower than bare (TPOT p50 30-47 ms vs "
    "19-30 ms; HAProxy within a few ms of bare up to 27 requests/s), and at 54 requests/s TTFT p99 was 2.0 s "
    "(HAProxy 1.4 s, bare 1.2 s). Without Ray's throughput mode (now always on) it met the SLO for only 75% of "
    "requests at 27 requests/s."
)
"""What Ray's Python proxy costs, as measured; `fleetgate serve` says it whenever it has to use it."""


def python_proxy_warning() -> str:
    """The loud line for a Ray Serve start without HAProxy: why, what it costs, how to fix it."""
    import shutil

    if shutil.which("haproxy") is None:
        why, fix = "`haproxy` is not on PATH", "install it (Debian/Ubuntu: apt-get install haproxy) and restart"
    else:
        why, fix = "RAY_SERVE_ENABLE_HA_PROXY=0 turned HAProxy off", "unset it and restart"
    return (f"WARNING: Ray Serve is using its Python proxy, because {why}. {PYTHON_PROXY_COST} "
            f"To get Ray Serve's HAProxy ingress, {fix}; or run the gateway without Ray: --bare.")


def _bench_overhead(args: argparse.Namespace) -> int:
    from fleetgate.app.overhead_bench import run

    run(args.requests, args.repeats, tuple(args.ports))
    return 0


def _bench_embedder(args: argparse.Namespace) -> int:
    from fleetgate.app.embedder_bench import run, table

    print(table(run(replicas=args.replicas, texts=args.texts, concurrency=args.concurrency, runs=args.runs),
                args.replicas))
    return 0


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to `commands` and its benchmarks to `bench`."""
    serve = commands.add_parser(
        "serve", help="run the gateway (OpenAI API, on 127.0.0.1 unless told otherwise) in front of a fleet",
        description=DESCRIPTION,
    )
    serve.add_argument("--config", help="settings file: a Ray Serve config (e.g. deploy/serve.yaml: its first "
                       "application's args, and http_options' host and port) or a plain mapping of settings")
    serve.add_argument("--bare", action="store_true", help="run the ASGI app under uvicorn in this process, "
                       "without Ray (the Ray Serve settings are then unused)")
    add_setting_flags(serve, ServeCommandSettings)
    serve.set_defaults(func=_serve)
    overhead = bench.add_parser(
        "overhead",
        help="latency and requests/s the gateway adds over calling an instance directly",
        description="Direct vs bare ASGI gateway vs Ray Serve gateway, 1 and 32 clients, streaming and not; "
                    "median of --repeats runs per cell.",
    )
    overhead.add_argument("--requests", type=int, default=300, help="requests per run (default 300)")
    overhead.add_argument("--repeats", type=int, default=3, help="runs per cell; the median is shown (default 3)")
    overhead.add_argument("--ports", type=int, nargs=3, default=(18100, 18101, 18102),
                          metavar=("EMULATOR", "BARE", "RAY"), help="loopback ports to use")
    overhead.set_defaults(func=_bench_overhead)
    embedder = bench.add_parser(
        "embedder",
        help="memory per gateway replica and embedding throughput on Ray Serve: the model in every replica "
             "vs one shared embedder deployment (and a policy that embeds nothing)",
        description="Three set-ups of --replicas gateway replicas on a local Ray in front of one emulated "
                    "instance; explains/s of distinct texts (one embedding each), median of --runs after a "
                    "warm-up run, and each replica's resident memory from /proc.",
    )
    embedder.add_argument("--replicas", type=int, default=2, help="gateway replicas (default 2)")
    embedder.add_argument("--texts", type=int, default=200, help="distinct texts per run (default 200)")
    embedder.add_argument("--concurrency", type=int, default=16, help="explains in flight (default 16)")
    embedder.add_argument("--runs", type=int, default=3, help="measured runs; the median is shown (default 3)")
    embedder.set_defaults(func=_bench_embedder)
    _add_bench_ray_path(bench)


def _add_bench_ray_path(bench: argparse._SubParsersAction) -> None:
    from fleetgate.core.defaults import DEFAULT_GPU, DEFAULT_TTFT_SLO_MS

    parser = bench.add_parser(
        "ray-path",
        help="goodput on Ray Serve (HAProxy, and Ray's Python proxy) next to bare, at real load, and where the "
             "Python proxy saturates",
        description=(
            "The same gateway bare, on Ray Serve with HAProxy, and on Ray's Python proxy, each in front of a fresh "
            "emulated fleet, replaying the same window of a trace open loop with streamed answers (as `bench peers`). "
            "Prints goodput (requests within the TTFT SLO per second of offered load, median of --repeats) against "
            "bare's with a within-10% verdict, TPOT (the cost of relaying every token), then the Python proxy at the "
            "--sweep rates and its capacity (>= 90% within the SLO). Times are emulated seconds (wall / "
            "--time-scale); a smaller --time-scale sends more requests per wall second through the front tier at "
            "the same load on the fleet (docs/scale-out.md). Default: 8 H100s, 300 Mooncake requests from "
            "trace second 300 at 7.66x (about 13 requests/s of wall time), 5 runs, about 8 minutes on a busy 2-core "
            "machine. Example: "
            "fleetgate bench ray-path --trace ../shared/traces/mooncake/synthetic_trace.jsonl"
        ),
    )
    parser.add_argument("--trace", required=True, help="Mooncake trace (e.g. ../shared/traces/mooncake/synthetic_trace.jsonl)")
    parser.add_argument("--window-start", type=float, default=300.0, metavar="S",
                        help="start of the window, trace seconds (default 300: conversations under way)")
    parser.add_argument("--requests", type=int, default=300, metavar="N", help="requests per run (default 300)")
    parser.add_argument("--rate-scale", type=float, default=7.66,
                        help="offered load, trace rate times X (default 7.66: ~27 req/s emulated, ~13 wall)")
    parser.add_argument("--sweep", default="10,12.5", metavar="X,Y",
                        help="more rate scales for the Python proxy alone (default %(default)s; --sweep= for none)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per path at --rate-scale; the median is shown")
    parser.add_argument("--paths", default="bare,ray-haproxy,ray-python-proxy", metavar="A,B",
                        help="which of bare, ray-haproxy, ray-python-proxy to run, in this order (default: all)")
    parser.add_argument("--slo-ttft-ms", type=float, default=DEFAULT_TTFT_SLO_MS, help="TTFT SLO (default %(default)s)")
    parser.add_argument("--instances", type=int, default=8, help="emulated instances (default 8)")
    parser.add_argument("--gpu", default=DEFAULT_GPU, help="their GPU profile (default %(default)s)")
    parser.add_argument("--time-scale", type=float, default=2.0, help="wall seconds per emulated second (default 2)")
    parser.add_argument("--run-timeout-s", type=float, default=300.0,
                        help="bound on one replay, wall seconds; requests still open count as failed (default 300)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/ray-path-<time>)")
    parser.set_defaults(func=_bench_ray_path)


def _bench_ray_path(args: argparse.Namespace) -> int:
    import json
    import time

    from fleetgate.loadgen.peers import BenchConfig, select_window
    from fleetgate.loadgen.ray_path import PATH_NAMES, RayPathPlan, markdown, run_ray_path, saturation, verdict
    from fleetgate.loadgen.traces import read_trace
    from fleetgate.pools.emulator.local import EmulatedPoolSpec
    from fleetgate.pools.profiles import get_profile

    unknown = [name for name in args.paths.split(",") if name.strip() not in PATH_NAMES]
    if unknown:
        print(f"fleetgate bench ray-path: unknown path {unknown[0]!r}; expected some of {', '.join(PATH_NAMES)}",
              file=sys.stderr)
        return 2
    try:
        pool = EmulatedPoolSpec("bench", "llama-3.1-8b", args.gpu, args.instances)
        max_model_len = get_profile(pool.gpu).max_model_len
        plan = RayPathPlan(args.rate_scale, args.repeats, tuple(float(x) for x in args.sweep.split(",") if x.strip()),
                           tuple(PATH_NAMES[name.strip()] for name in args.paths.split(",")))
    except (ValueError, KeyError) as error:
        print(f"fleetgate bench ray-path: {error}", file=sys.stderr)
        return 2
    window, refused = select_window(read_trace(args.trace, "mooncake").requests, start_s=args.window_start,
                                    count=args.requests, duration_s=None, max_model_len=max_model_len)
    if not window:
        print("fleetgate bench ray-path: the trace window holds no servable request", file=sys.stderr)
        return 1
    out_dir = args.out or Path("runs") / time.strftime("ray-path-%Y%m%d-%H%M%S")
    config = BenchConfig(requests=window, pool=pool, time_scale=args.time_scale, ttft_slo_ms=args.slo_ttft_ms,
                         out_dir=out_dir, run_timeout_s=args.run_timeout_s,
                         trace_meta={"trace": str(args.trace), "window_start_s": args.window_start,
                                     "refused_over_context": refused})
    runs = plan.runs()
    print(f"{len(window)} requests over {window[-1].arrival_s:.0f} trace seconds ({refused} over the context limit "
          f"left out); {pool.count} x {pool.gpu}, time scale {args.time_scale:g}; {len(runs)} runs; folders in "
          f"{out_dir}/", flush=True)
    rows, interrupted = run_ray_path(plan, config, on_run=lambda row: print(
        f"  {row.label} x{row.rate_scale:g}: {row.status[:200]}", flush=True))
    verdicts, sat = verdict(rows, args.rate_scale, plan.paths), saturation(rows)
    print("\n" + markdown(verdicts, sat, args.time_scale))
    results = out_dir / "results.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({
        "setup": {"instances": pool.count, "gpu": pool.gpu, "time_scale": args.time_scale,
                  "ttft_slo_ms": args.slo_ttft_ms, "requests": len(window), "rate_scale": args.rate_scale,
                  **config.trace_meta},
        "paths": verdicts, "python_proxy_sweep": sat,
        "runs": [{"label": r.label, "rate_scale": r.rate_scale, "status": r.status, "summary": r.summary} for r in rows],
    }, indent=2) + "\n", encoding="utf-8")  # fmt: skip
    print(f"\nresults: {results}")
    return 130 if interrupted else 0
