"""Custom GPU profiles in the fleet file: usable by pools and instances, checked with YAML paths."""

import pytest

from fleetgate.core.yamlconf import ConfigError
from fleetgate.pools.config import dump_fleet, fleet_from_pools, parse_fleet
from fleetgate.pools.emulator.local import specs_from_fleet
from fleetgate.pools.profiles import get_profile

GPUS = """
gpus:
  h200:
    prefill_tokens_per_s: 45000
    step_overhead_s: 0.0035
    decode_per_seq_s: 0.00003
    decode_per_context_token_s: 28.0e-9
    kv_cache_tokens: 900000
    max_model_len: 65536
"""

VALID = GPUS + """
pools:
  - {name: big, model: m, gpu: H200, count: 2, base_port: 9100}
  - name: mixed
    model: m
    instances:
      - {url: "http://10.0.0.1:8000"}
      - {url: "http://10.0.0.2:8000", gpu: h200}
"""


def test_pools_and_instances_use_a_custom_profile():
    fleet = parse_fleet(VALID)
    pools = fleet.to_pools()
    big = pools["big"].endpoints[0]
    assert big.gpu == "h200" and big.profile.kv_cache_tokens == 900000 and big.profile.name == "h200"
    assert big.max_context_tokens == 65536  # the custom profile's max_model_len
    assert big.profile.max_num_seqs == 256  # a field left out keeps GpuProfile's default
    mixed = pools["mixed"].endpoints
    assert mixed[0].profile is get_profile("h100") and mixed[1].profile.prefill_tokens_per_s == 45000
    assert specs_from_fleet(fleet)[0].gpu_profile == big.profile  # what `fleet up` starts its emulators with


def test_a_running_fleet_dumps_its_custom_profiles():
    pools = parse_fleet(VALID).to_pools()
    assert parse_fleet(dump_fleet(fleet_from_pools(pools))).to_pools() == pools


@pytest.mark.parametrize(
    ("yaml_text", "path", "fragment"),
    [
        ("pools:\n  - {name: a, model: m, gpu: h200, count: 1, base_port: 1}", "pools[0].gpu", "known: a100, h100, l4"),
        (GPUS + "pools:\n  - {name: a, model: m, gpu: b200, count: 1, base_port: 1}", "pools[0].gpu",
         "known: a100, h100, h200, l4"),
        (GPUS + "pools:\n  - name: a\n    model: m\n    instances:\n      - {url: 'http://x:1', gpu: tpu}",
         "pools[0].instances[0].gpu", "unknown GPU profile 'tpu'"),
        (GPUS.replace("    kv_cache_tokens: 900000\n", "") + "pools:\n  - {name: a, model: m, count: 1, base_port: 1}",
         "gpus.h200.kv_cache_tokens", "Field required"),
        (GPUS.replace("45000", "-1") + "pools:\n  - {name: a, model: m, count: 1, base_port: 1}",
         "gpus.h200.prefill_tokens_per_s", "greater than 0"),
        (GPUS + "    colour: red\npools:\n  - {name: a, model: m, count: 1, base_port: 1}",
         "gpus.h200.colour", "Extra inputs"),
        (GPUS.replace("h200:", "h100:") + "pools:\n  - {name: a, model: m, count: 1, base_port: 1}",
         "gpus.h100.[key]", "built-in"),
    ],
)
def test_invalid_custom_profiles_name_the_yaml_path(yaml_text, path, fragment):
    with pytest.raises(ConfigError) as caught:
        parse_fleet(yaml_text)
    assert any(p == path and fragment in m for p, m in caught.value.problems), caught.value.problems
