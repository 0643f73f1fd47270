"""Policy YAML -> a validated, checked `LoadedPolicy`; every problem names its YAML path and line.

Loading is: parse YAML, validate the schema, resolve the pools (given by the caller, a fleet file,
inline, or a `fleet:` path relative to the policy), then run the conflict checks. Errors from any
stage come back as (yaml_path, message) pairs; warnings travel with the loaded policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import yaml
from pydantic import ValidationError

from fleetgate.core.yamlconf import ConfigError, yaml_path
from fleetgate.policies.conflicts import Finding, check_policy, errors
from fleetgate.policies.schema import Policy
from fleetgate.policies.topics import Topics, load_topics
from fleetgate.pools.config import FleetConfig, load_fleet
from fleetgate.pools.model import Pool


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    """A policy that passed every check, the pools it was checked against, and its warnings."""

    policy: Policy
    pools: Mapping[str, Pool] | None  # None: no fleet known when it was loaded
    source: str
    warnings: tuple[Finding, ...] = ()
    topics: Topics | None = None  # the `topics:` fragment and its trained head


BUILTIN_POLICY = Path(__file__).with_name("default.yaml")
"""The policy shipped in the package (documented line by line): what the demo and the tools use by default."""

def _line_index(text: str) -> dict[str, int]:
    """YAML path -> 1-based line of the key (or item) that starts it."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    index: dict[str, int] = {}

    def walk(node: yaml.Node, location: tuple[int | str, ...]) -> None:
        index.setdefault(yaml_path(location), node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*location, str(key.value))
                index.setdefault(yaml_path(child), key.start_mark.line + 1)
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for position, item in enumerate(node.value):
                walk(item, (*location, position))

    if root is not None:
        walk(root, ())
    return index


_LAST_STEP = re.compile(r"(\.[^.\[]+|\[\d+\])$")


def _line_of(index: dict[str, int], path: str) -> int | None:
    """The line of `path`, or of its nearest ancestor present in the file (a missing field)."""
    while path:
        if path in index:
            return index[path]
        shorter = _LAST_STEP.sub("", path)
        path = "" if shorter == path else shorter
    return None


def _schema_findings(error: ValidationError, prefix: str = "") -> list[Finding]:
    return [
        Finding("error", prefix + yaml_path(tuple(e["loc"])), str(e["msg"]).removeprefix("Value error, "))
        for e in error.errors()
    ]


def _resolve_pools(
    policy: Policy, base_dir: Path, pools: Mapping[str, Pool] | None, fleet_path: str | Path | None
) -> tuple[Mapping[str, Pool] | None, list[Finding]]:
    """Caller's pools win, then an explicit fleet file, then the policy's inline pools or `fleet:`."""
    if pools is not None:
        return pools, []
    if policy.pools is not None and fleet_path is None:
        try:
            return FleetConfig(pools=policy.pools).to_pools(), []
        except ValidationError as exc:
            return None, [Finding("error", "pools", e["msg"].removeprefix("Value error, ")) for e in exc.errors()]
    path = Path(fleet_path) if fleet_path is not None else (base_dir / policy.fleet if policy.fleet else None)
    if path is None:
        return None, []
    try:
        return load_fleet(path).to_pools(), []
    except ConfigError as exc:
        where = "" if fleet_path is not None else "fleet"
        return None, [Finding("error", where, f"fleet file {path}: {p or '<root>'}: {m}") for p, m in exc.problems]


def _resolve_topics(policy: Policy, base_dir: Path) -> tuple[Topics | None, list[Finding]]:
    """The `topics:` fragment and its head, loaded relative to the policy's folder."""
    if policy.topics is None:
        return None, []
    try:
        return load_topics(policy.topics.fragment, base_dir), []
    except (OSError, ValueError, yaml.YAMLError) as exc:
        return None, [Finding("error", "topics.fragment", f"cannot load topics fragment {policy.topics.fragment!r}: {exc}")]


def check_text(
    text: str,
    source: str = "<string>",
    *,
    base_dir: Path = Path("."),
    pools: Mapping[str, Pool] | None = None,
    fleet_path: str | Path | None = None,
) -> tuple[LoadedPolicy | None, list[Finding]]:
    """Every finding for a policy text (never raises); the policy too when there is no error."""
    try:
        index = _line_index(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        return None, [Finding("error", "", f"not valid YAML: {getattr(exc, 'problem', exc)}", mark.line + 1 if mark else None)]
    except RecursionError:  # PyYAML composes recursively: a deeply nested document would crash the reload
        return None, [Finding("error", "", "not valid YAML: nested too deeply")]
    if not isinstance(data, dict):
        return None, [Finding("error", "", "the document must be a mapping (version:, rules:, ...)")]
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        findings = _schema_findings(exc)
    else:
        resolved, findings = _resolve_pools(policy, base_dir, pools, fleet_path)
        topics, topic_findings = _resolve_topics(policy, base_dir)
        findings += topic_findings
        if not findings:
            findings = check_policy(policy, resolved, topics.domains if topics is not None else ())
    findings = [Finding(f.severity, f.path, f.message, _line_of(index, f.path)) for f in findings]
    if errors(findings):
        return None, findings
    return LoadedPolicy(policy, resolved, source, tuple(findings), topics), findings


def check_file(
    path: str | Path, *, pools: Mapping[str, Pool] | None = None, fleet_path: str | Path | None = None
) -> tuple[LoadedPolicy | None, list[Finding]]:
    """`check_text` for a file; relative `fleet:` paths are resolved next to it."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        return None, [Finding("error", "", f"cannot read {path}: {exc.strerror}")]
    return check_text(text, str(path), base_dir=path.parent, pools=pools, fleet_path=fleet_path)


def load_policy(
    path: str | Path, *, pools: Mapping[str, Pool] | None = None, fleet_path: str | Path | None = None
) -> LoadedPolicy:
    """The checked policy in `path`, or ConfigError listing (yaml_path, message) of every error."""
    loaded, findings = check_file(path, pools=pools, fleet_path=fleet_path)
    if loaded is None:
        raise config_error(str(path), findings)
    return loaded


def config_error(source: str, findings: list[Finding]) -> ConfigError:
    """The ConfigError listing the errors among `findings` as (yaml_path, message (line N))."""
    return ConfigError(source, [(f.path, f.message + (f" (line {f.line})" if f.line else "")) for f in errors(findings)])
