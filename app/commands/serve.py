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
from typing import Any, Mapping

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
        import uvicorn

        from fleetgate.app.compose import build_asgi_app

        app = build_asgi_app(settings.narrowed(GatewaySettings))
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
        return 0
    from fleetgate.app.serve import start_local, stop_local

    haproxy = start_local(settings.serve_args(), host=settings.host, port=settings.port)
    print(f"Fleetgate on Ray Serve at http://{settings.host}:{settings.port}/v1 "
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
