"""`fleetgate` subcommands of the policy (policy check, policy explain) area (see router/cli.py for how areas register)."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to `commands` and its benchmarks to `bench`."""
