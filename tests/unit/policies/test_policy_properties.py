"""Property tests (hypothesis) of the policy loader: any text or JSON value gives a loaded policy or a
list of findings (which `load_policy` turns into a ConfigError); never another exception, which would
take down the hot reload that a broken file must leave running on the last good policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fleetgate.core.yamlconf import ConfigError
from fleetgate.policies.load import BUILTIN_POLICY, check_text, load_policy

BOUNDED = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = ["version", "rules", "categories", "pools", "topic", "cache", "name", "match", "route", "keywords",
        "default_category", "enabled", "threshold", "ttl_s", "fleet", "router", "model", "ttft_slo_ms", "topics"]
yaml_like = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.sampled_from(["a", "", "x.yaml"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(KEYS), children, max_size=5),
    max_leaves=25,
)


def checked(text: str) -> None:
    loaded, findings = check_text(text, "fuzz.yaml", base_dir=Path("/nonexistent"))
    assert loaded is not None or findings


@BOUNDED
@given(text=st.text(max_size=300))
@example(text="[" * 5000)
@example(text="a: &a [*a]")
@example(text="!!python/object:os.system {}")
def test_any_text(text: str) -> None:
    checked(text)


@BOUNDED
@given(value=yaml_like)
def test_any_yaml_value(value: Any) -> None:
    checked(json.dumps(value))


@BOUNDED
@given(value=yaml_like, key=st.sampled_from(KEYS))
def test_the_shipped_policy_with_one_key_replaced(value: Any, key: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    import yaml

    document = yaml.safe_load(BUILTIN_POLICY.read_text())
    document[key] = value
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(json.dumps(document))
    try:
        load_policy(path)
    except ConfigError as error:
        assert error.problems
