"""`fleetgate`: one command line for the whole product.

Each area registers its own subcommands (`register(subparsers)` in its `cli` module) and
imports its heavy dependencies only inside the handlers, so `fleetgate --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

AREA_COMMANDS: tuple[str, ...] = ()
"""Modules with a `register(subparsers)` function, in the order their commands are listed."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetgate",
        description=(
            "Fleetgate: an OpenAI-compatible gateway and router for fleets of vLLM instances. "
            "Run `fleetgate demo` to see the whole product on an emulated fleet."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in AREA_COMMANDS:
        importlib.import_module(module_name).register(subparsers)
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
