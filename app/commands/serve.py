"""`fleetgate serve` (the gateway on Ray Serve, or bare) and `fleetgate bench overhead`."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any


def _serve_args(args: argparse.Namespace) -> dict[str, Any]:
    """Settings from --config (a Ray Serve config or a bare args mapping) overlaid with flags."""
    settings: dict[str, Any] = {}
    if args.config:
        from fleetgate.core.yamlconf import load_yaml

        document = load_yaml(args.config)
        applications = document.get("applications") if isinstance(document, dict) else None
        settings.update(applications[0].get("args", {}) if applications else document)
    if args.fleet:
        settings["fleet"] = args.fleet
    if args.worker_urls:
        settings.update(worker_urls=args.worker_urls, model=args.model, gpu=args.gpu)
        settings.pop("fleet", None)
    for flag in ("router", "ttft_slo_ms", "policy", "redis_url"):
        if getattr(args, flag) is not None:
            settings[flag] = getattr(args, flag)
    if args.replicas is not None:
        settings["num_replicas"] = args.replicas
    return settings


def _wait_for_ctrl_c() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    settings = _serve_args(args)
    try:
        from fleetgate.app.serve import ServeArgs

        ServeArgs(**settings)
    except ValidationError as error:
        print(f"fleetgate serve: invalid settings:\n{error}")
        return 2
    if args.bare:
        import uvicorn
        from fleetgate.app.compose import GatewaySettings, build_asgi_app

        settings.pop("num_replicas", None)
        app = build_asgi_app(GatewaySettings(**settings))
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
        return 0
    from fleetgate.app.serve import start_local, stop_local

    haproxy = start_local(settings, port=args.port)
    print(f"Fleetgate on Ray Serve at http://127.0.0.1:{args.port}/v1 "
          f"({'HAProxy' if haproxy else 'Python'} proxy); Ctrl-C stops it.", flush=True)
    try:
        _wait_for_ctrl_c()
    finally:
        stop_local()
    return 0


def _bench_overhead(args: argparse.Namespace) -> int:
    from fleetgate.app.overhead_bench import run

    run(args.requests, args.repeats, tuple(args.ports))
    return 0


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to `commands` and its benchmarks to `bench`."""
    serve = commands.add_parser(
        "serve",
        help="run the gateway (OpenAI API on 127.0.0.1) in front of a fleet",
        description=(
            "Run the Fleetgate gateway. Point OpenAI clients at http://127.0.0.1:PORT/v1. "
            "Give the fleet as a fleet file (--fleet), a Ray Serve config (--config), or for a quick "
            "start a list of vLLM URLs serving one model (--worker-urls ... --model NAME)."
        ),
    )
    serve.add_argument("--config", help="Ray Serve config (e.g. deploy/serve.yaml); its args are the gateway settings")
    serve.add_argument("--fleet", help="fleet file with pools and instances (e.g. deploy/fleet.example.yaml)")
    serve.add_argument("--worker-urls", nargs="+", metavar="URL", help="quick start: vLLM base URLs of one pool")
    serve.add_argument("--model", help="quick start: the model name the worker URLs serve")
    serve.add_argument("--gpu", default="h100", help="quick start: GPU profile of the workers (h100, a100, l4)")
    serve.add_argument("--policy", help="policy YAML: workload rules -> pools, SLOs, cache (e.g. policies/default.yaml); "
                       "hot-reloaded when the file changes")
    serve.add_argument("--redis-url", help="keep semantic cache documents in Redis (shared by replicas), "
                       "e.g. redis://127.0.0.1:6379/0; default: in memory")
    serve.add_argument("--router", help="routing algorithm without a policy: dualmap (default), round-robin, ...")
    serve.add_argument("--ttft-slo-ms", type=float, help="TTFT SLO used by dualmap's fallback when no policy sets one")
    serve.add_argument("--replicas", type=int, help="gateway replicas on Ray Serve (default 1)")
    serve.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default 8000)")
    serve.add_argument("--bare", action="store_true", help="run the ASGI app under uvicorn, without Ray (one process)")
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
