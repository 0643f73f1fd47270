"""`fleetgate fleet up` starts emulators with a fleet file's custom GPU profile: their /metrics
report its KV capacity (vllm:cache_config_info), which is what the gateway's registry reads."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from fleetgate.app.cli import main
from fleetgate.pools.emulator.launcher import FleetState
from fleetgate.pools.scrape import parse_vllm_metrics

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_fleet_up_runs_a_custom_gpu_profile(tmp_path) -> None:
    port = free_port()
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(
        "gpus:\n"
        "  tiny-gpu:\n"
        "    prefill_tokens_per_s: 20000\n"
        "    step_overhead_s: 0.004\n"
        "    decode_per_seq_s: 0.00005\n"
        "    decode_per_context_token_s: 50.0e-9\n"
        "    kv_cache_tokens: 8192\n"
        "    max_model_len: 4096\n"
        "pools:\n"
        f"  - {{name: small, model: tiny-llama, gpu: tiny-gpu, count: 1, base_port: {port}}}\n"
    )
    state_dir = tmp_path / "state"
    try:
        assert main(["fleet", "up", str(fleet_file), "--time-scale", "0.1", "--state-dir", str(state_dir)]) == 0
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert parse_vllm_metrics(metrics).kv_cache_tokens == 8192
        endpoint = FleetState.read(state_dir / "fleet.json").to_pools()["small"].endpoints[0]
        assert endpoint.profile.name == "tiny-gpu" and endpoint.profile.kv_cache_tokens == 8192
        assert endpoint.max_context_tokens == 4096
    finally:
        assert main(["fleet", "down", "--state-dir", str(state_dir)]) == 0
