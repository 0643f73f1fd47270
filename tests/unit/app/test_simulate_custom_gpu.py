"""`fleetgate simulate --gpu NAME --fleet FLEET.yaml`: a fleet file's custom GPU profile in the simulator."""

import json

from fleetgate.app.cli import main

FLEET = """gpus:
  slow-gpu:
    prefill_tokens_per_s: 3000
    step_overhead_s: 0.03
    decode_per_seq_s: 0.0003
    decode_per_context_token_s: 400.0e-9
    kv_cache_tokens: 50000
pools:
  - {name: a, model: m, gpu: slow-gpu, count: 1, base_port: 9999}
"""
TRACE = "groups=2,prefix=512,suffix=64,output=16,rate=5,count=40"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["simulate", "--trace", TRACE, "--trace-format", "synthetic", "--instances", "2", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_runs_a_custom_profile(tmp_path, capsys):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(FLEET)
    code, out, _ = run(capsys, "--gpu", "slow-gpu", "--fleet", str(fleet), "--json")
    assert code == 0
    slow = json.loads(out)
    code, out, _ = run(capsys, "--json")  # the default h100
    assert code == 0 and slow["ttft_p50_ms"] > 3 * json.loads(out)["ttft_p50_ms"]


def test_an_unknown_gpu_lists_the_known_ones(tmp_path, capsys):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(FLEET)
    code, _, err = run(capsys, "--gpu", "b200", "--fleet", str(fleet))
    assert code == 2 and "known: a100, h100, l4, slow-gpu" in err
