"""The `fleetgate` command tree, for tests that check every subcommand (help, documented lines)."""

from __future__ import annotations

import argparse
from typing import Iterator


def subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(words after `fleetgate`, parser) for `parser` and every subcommand below it, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from subcommands(child, (*path, name))
