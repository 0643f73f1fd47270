"""Every `fleetgate` command and subcommand answers --help."""

from __future__ import annotations

import pytest
from support.cli_tree import subcommands

from fleetgate.app.cli import build_parser

COMMANDS = [path for path, _ in subcommands(build_parser())]


def test_the_walk_reaches_nested_and_bench_commands() -> None:
    assert {("serve",), ("fleet", "up"), ("bench", "overhead"), ("bench",)} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "fleetgate")
def test_help_exits_0_with_usage(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*path, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(" ".join(["usage: fleetgate", *path]))
