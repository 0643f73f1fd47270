"""Load YAML into pydantic models with errors that name the YAML path of every problem.

Operators edit these files by hand; "pools[1].instances[0].url: Field required" tells them
where to look, a pydantic traceback does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration file is invalid; `problems` lists (yaml_path, message) pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {path or '<root>'}: {message}" for path, message in problems)
        super().__init__(f"{source} is invalid:\n{lines}")


def yaml_path(location: tuple[int | str, ...]) -> str:
    """('pools', 1, 'url') -> 'pools[1].url'."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def parse_yaml(text: str, model: type[ModelT], source: str = "<string>") -> ModelT:
    """Validate YAML text against `model`, raising ConfigError with YAML paths."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(source, [("", f"not valid YAML at {where}: {getattr(exc, 'problem', exc)}")]) from None
    if not isinstance(data, dict):
        raise ConfigError(source, [("", "the document must be a mapping")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [
            (yaml_path(tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))), err["msg"])
            for err in exc.errors()
        ]
        raise ConfigError(source, problems) from None


def load_yaml(path: str | Path, model: type[ModelT]) -> ModelT:
    """Read and validate a YAML file; a missing file is a ConfigError too."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(str(path), [("", f"cannot read: {exc.strerror}")]) from None
    return parse_yaml(text, model, source=str(path))
