"""`fleetgate observe ...` (the Grafana dashboard, its panels as a picture) and `fleetgate bench tracing`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _dashboard(args: argparse.Namespace) -> int:
    from fleetgate.app.dashboard import dashboard

    text = json.dumps(dashboard(), indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
    return 0


def _panels(args: argparse.Namespace) -> int:
    from fleetgate.app.panels_png import render

    drawn = render(args.prometheus.rstrip("/"), Path(args.out), minutes=args.minutes, window=args.window)
    print(f"{args.out}: {drawn} panels with data")
    return 0


def _bench_tracing(args: argparse.Namespace) -> int:
    from fleetgate.app.tracing_bench import run, table

    print(table(run(args.requests, args.repeats, args.first_port)))
    return 0


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to `commands` and its benchmarks to `bench`."""
    observe = commands.add_parser("observe", help="the Grafana dashboard and a picture of its panels")
    tools = observe.add_subparsers(dest="observe", metavar="TOOL")
    observe.set_defaults(func=lambda _args: observe.print_help() or 2)
    dashboard = tools.add_parser("dashboard", help="write the Grafana dashboard JSON (deploy/grafana/fleetgate.json)")
    dashboard.add_argument("--out", help="file to write (default: standard output)")
    dashboard.set_defaults(func=_dashboard)
    panels = tools.add_parser("panels", help="draw the dashboard's panels with matplotlib from a Prometheus server")
    panels.add_argument("--prometheus", required=True, help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    panels.add_argument("--out", required=True, help="PNG file to write")
    panels.add_argument("--minutes", type=float, default=10.0, help="time range drawn, up to now (default 10)")
    panels.add_argument("--window", default="1m", help="rate window in place of Grafana's $__rate_interval "
                        "(default 1m)")
    panels.set_defaults(func=_panels)
    tracing = bench.add_parser(
        "tracing", help="what OpenTelemetry tracing costs a request: off vs on, sampled at 1.0 and 0.01",
        description="Three bare gateways (tracing off, on at 1.0, on at 0.01, exporting over OTLP/HTTP to a sink "
                    "on loopback) in front of one near-instant emulated instance; median of --repeats runs per cell.")
    tracing.add_argument("--requests", type=int, default=300, help="requests per run (default 300)")
    tracing.add_argument("--repeats", type=int, default=3, help="runs per cell; the median is shown (default 3)")
    tracing.add_argument("--first-port", type=int, default=18200, help="loopback ports used: this one and the "
                         "next three (default 18200)")
    tracing.set_defaults(func=_bench_tracing)
