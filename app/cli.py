"""`fleetgate`: one command line for the whole product.

Each area registers its own subcommands (`register(commands, bench)` in its `cli` module: `commands`
are top-level subcommands, `bench` the subcommands of `fleetgate bench`) and imports its heavy
dependencies only inside the handlers, so `fleetgate --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

AREA_COMMANDS: tuple[str, ...] = (
    "fleetgate.app.commands.pools",
    "fleetgate.app.commands.serve",
    "fleetgate.app.commands.keys",
    "fleetgate.app.commands.policies",
    "fleetgate.app.commands.cache",
    "fleetgate.app.commands.simulate",
    "fleetgate.app.commands.loadgen",
    "fleetgate.app.commands.admission",
    "fleetgate.app.commands.observe",
    "fleetgate.app.demo",
)
"""Modules with a `register(commands, bench)` function, in the order their commands are listed."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetgate",
        description=(
            "Fleetgate: an OpenAI-compatible gateway and router for fleets of vLLM instances. "
            "Run `fleetgate demo` to see the whole product on an emulated fleet."
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench_parser = commands.add_parser(
        "bench", help="benchmarks: each prints its figure next to its baseline, median of several runs"
    )
    bench = bench_parser.add_subparsers(dest="bench", metavar="BENCHMARK")
    bench_parser.set_defaults(func=lambda _args: bench_parser.print_help() or 2)
    for module_name in AREA_COMMANDS:
        importlib.import_module(module_name).register(commands, bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "func", None)
    if handler is None:
        parser.print_help()
        return 2
    return int(handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
