"""A pool's backend key: named by an environment variable in the fleet file, never written there."""

from __future__ import annotations

import pytest

from fleetgate.core.yamlconf import ConfigError
from fleetgate.pools.config import parse_fleet

POOL = "pools:\n  - {{name: a, model: m, instances: [{{url: 'http://127.0.0.1:9'}}], {extra}}}\n"


def test_the_pool_names_a_variable_and_sends_its_value_as_a_bearer_token() -> None:
    pool = parse_fleet(POOL.format(extra="api_key_env: POOL_A_KEY")).to_pools()["a"]
    assert pool.upstream_authorization({"POOL_A_KEY": "s3cret"}) == "Bearer s3cret"
    with pytest.raises(ValueError, match="POOL_A_KEY"):
        pool.upstream_authorization({})
    plain = parse_fleet(POOL.format(extra="gpu: h100")).to_pools()["a"]
    assert plain.upstream_authorization({}) is None and not plain.forward_client_key


@pytest.mark.parametrize("extra, where", [
    ("api_key_env: sk-abc123def456", "pools[0].api_key_env"),  # a literal key, not a variable name
    ("api_key: sk-abc123", "pools[0].api_key"),
    ("{api_key_env: K, forward_client_key: true}", "pools[0]"),
])
def test_a_literal_key_or_both_credentials_are_refused_with_the_yaml_path(extra: str, where: str) -> None:
    text = POOL.format(extra=extra.strip("{}"))
    with pytest.raises(ConfigError) as error:
        parse_fleet(text)
    assert any(path == where for path, _ in error.value.problems)
