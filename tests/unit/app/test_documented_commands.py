"""Every `fleetgate ...` line the docs show parses, so renaming a command or a flag breaks CI, not a reader.

The docs are read when the tests are collected. Synopsis notation is understood: placeholders (N, FILE) for typed values, `[optional]`
brackets, `a|b` alternatives (the first is checked), `...` for omitted arguments and `up/down` for
two subcommands. Required arguments are not demanded (a doc may name a command without them);
every command word, flag, choice and typed value is checked.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from support.cli_tree import subcommands

from fleetgate.app.cli import build_parser

ROOT = Path(__file__).resolve().parents[3]
COMMAND_START = re.compile(r"(?<![\w./-])fleetgate(?=\s|$)")
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "deploy").rglob("*.md"))]


def code_texts(markdown: str) -> Iterator[str]:
    """Each line of a fenced code block (backslash continuations joined) and each inline code span."""
    fenced: list[str] = []
    prose: list[str] = []
    in_block = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_block = not in_block
            fenced.append("")  # blocks never continue into each other
        elif in_block:
            fenced.append(line)
        else:
            prose.append(line)
    yield from re.sub(r"\s*\\\n\s*", " ", "\n".join(fenced)).splitlines()
    for paragraph in re.split(r"\n\s*\n", "\n".join(prose)):
        yield from re.findall(r"`([^`]+)`", paragraph.replace("\n", " "))


def command_lines(markdown: str) -> Iterator[str]:
    """The part of each shown command that starts at `fleetgate`, `&&` chains split."""
    for text in code_texts(markdown):
        for part in text.split("&&"):
            start = COMMAND_START.search(part)
            if start:
                yield part[start.start():].strip()


def argument_lists(line: str, command_names: set[str]) -> list[list[str]]:
    """The argument lists (after `fleetgate`) that a documented line stands for."""
    words: list[str] = []
    depth = 0
    for token in shlex.split(line, comments=True)[1:]:
        if token == "|" and depth == 0:
            break  # a pipe into another program
        opened, closed = token.count("["), token.count("]")
        word = token.strip("[]")
        depth += opened - closed
        if word not in ("", "|", "...", "…"):
            words.append(word.split("|")[0] if word.startswith("-") or "|" in word else word)
    for index, word in enumerate(words):
        alternatives = word.split("/")
        if len(alternatives) > 1 and set(alternatives) <= command_names:
            return [lists for alt in alternatives
                    for lists in argument_lists(shlex.join(["fleetgate", *words[:index], alt, *words[index + 1:]]),
                                                command_names)]
    return [words]


def placeholder_or(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """`convert`, except that a placeholder such as N or FILE passes as it is."""
    return lambda value: value if PLACEHOLDER.fullmatch(value) else convert(value)


def lenient_parser() -> argparse.ArgumentParser:
    """`fleetgate`'s parser with no argument required and placeholders accepted as typed values."""
    parser = build_parser()
    for _, command in subcommands(parser):
        for action in command._actions:
            action.required = False
            if action.type is not None:
                action.type = placeholder_or(action.type)  # type: ignore[arg-type]
            if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
                action.nargs = {None: "?", "+": "*"}.get(action.nargs, action.nargs)  # type: ignore[arg-type]
    return parser


def parse_problem(arguments: list[str]) -> str | None:
    """argparse's complaint about `arguments`, or None when they parse."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            lenient_parser().parse_args(arguments)
    except SystemExit as exited:
        return None if exited.code == 0 else stderr.getvalue().strip().splitlines()[-1]
    return None


COMMAND_NAMES = {path[-1] for path, _ in subcommands(build_parser()) if path}
DOCUMENTED = [(f"{path.relative_to(ROOT)}: {line}", arguments)
              for path in markdown_files()
              for line in dict.fromkeys(command_lines(path.read_text()))
              for arguments in argument_lists(line, COMMAND_NAMES)]


def test_the_docs_show_commands_of_every_kind() -> None:
    shown = {" ".join(arguments[:2]) for _, arguments in DOCUMENTED}
    assert {"demo", "serve --fleet", "fleet up", "fleet down", "bench overhead"} <= shown


@pytest.mark.parametrize(("where", "arguments"), DOCUMENTED, ids=[where for where, _ in DOCUMENTED])
def test_documented_command_parses(where: str, arguments: list[str]) -> None:
    assert parse_problem(arguments) is None, f"{where}\n  {parse_problem(arguments)}"


def test_a_renamed_flag_or_command_is_caught() -> None:
    doc = "Run `fleetgate serve --no-such-flag 1`, then:\n```bash\nfleetgate fleet launch FLEET.yaml\n```\n"
    lines = list(command_lines(doc))
    assert lines == ["fleetgate fleet launch FLEET.yaml", "fleetgate serve --no-such-flag 1"]
    assert all(parse_problem(arguments) for line in lines for arguments in argument_lists(line, COMMAND_NAMES))


def test_synopsis_notation_is_read_as_meant() -> None:
    assert argument_lists("fleetgate fleet up/down [--state-dir DIR] ... | head", COMMAND_NAMES) == [
        ["fleet", "up", "--state-dir", "DIR"], ["fleet", "down", "--state-dir", "DIR"]]
    assert argument_lists("fleetgate cache eval [--policy P | --tune-on T] --embedder minilm|hashing",
                          COMMAND_NAMES) == [["cache", "eval", "--policy", "P", "--tune-on", "T", "--embedder", "minilm"]]
    assert list(command_lines("```bash\nA=1 fleetgate replay --trace T \\\n  --target URL && fleetgate report R\n```")) == [
        "fleetgate replay --trace T --target URL", "fleetgate report R"]
