"""Real vLLM (CPU build, tiny model) for the `realvllm` tier: two instances for the whole session,
started once (about 70 s) and shared by the conformance and the gateway tests.

Run with `python -m pytest -m realvllm tests/realvllm` after `deploy/vllm-cpu/setup.sh`. A missing
vLLM environment is a failure, never a skip: this tier exists to prove the real thing.
"""

from __future__ import annotations

from typing import AsyncIterator, Iterator

import pytest
from support.gateway import MODEL
from support.servers import free_port

from fleetgate.loadgen.realcache import DEV_MODE_ENV
from fleetgate.pools.emulator.server import EmulatorServer
from fleetgate.pools.realvllm import VllmFleet, VllmNotInstalled, VllmSettings, run_vllm

MAX_MODEL_LEN = 4096


@pytest.fixture(scope="session")
def vllm_settings(tmp_path_factory: pytest.TempPathFactory) -> VllmSettings:
    """How the session's instances start; each also publishes KV events (its `kv_events_url`)."""
    return VllmSettings(served_model_name=MODEL, max_model_len=MAX_MODEL_LEN, extra_env=DEV_MODE_ENV,
                        kv_events_dir=tmp_path_factory.mktemp("kv"))


@pytest.fixture(scope="session")
def real_vllm(vllm_settings: VllmSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmFleet]:
    settings = vllm_settings
    problem = None
    try:
        settings.check_installed()
    except VllmNotInstalled as exc:
        problem = str(exc)
    if problem is not None:  # outside the except: one message, no chained traceback
        pytest.fail(f"{problem}\nThe realvllm tier needs real vLLM: run deploy/vllm-cpu/setup.sh "
                    "(or set FLEETGATE_VLLM_VENV to an environment it made).", pytrace=False)
    with run_vllm(settings, [free_port(), free_port()], log_dir=tmp_path_factory.mktemp("vllm-logs")) as fleet:
        yield fleet


@pytest.fixture
def vllm_url(real_vllm: VllmFleet) -> str:
    return real_vllm.urls[0]


@pytest.fixture
async def emulator() -> AsyncIterator[EmulatorServer]:
    """An emulator configured like the real instances (model name, context limit), in this test's loop."""
    server = EmulatorServer("l4", MODEL, max_model_len=MAX_MODEL_LEN, time_scale=0.2)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="session")
def real_gateway_url(real_vllm: VllmFleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The gateway on a local Ray Serve (one replica: two cores also run both vLLM instances) in front of
    both real instances, DualMap routing, from a fleet file that states their real context limit."""
    from fleetgate.app.serve import start_local, stop_local
    from fleetgate.pools.config import (
        FleetConfig,
        InstanceConfig,
        PoolConfig,
        dump_fleet,
    )

    fleet_file = tmp_path_factory.mktemp("fleet") / "fleet.yaml"
    fleet_file.write_text(dump_fleet(FleetConfig(pools=[PoolConfig(
        name="real", model=MODEL, gpu="l4", max_context_tokens=MAX_MODEL_LEN,
        instances=[InstanceConfig(url=url) for url in real_vllm.urls],
    )])))
    port = free_port()
    start_local({"fleet": str(fleet_file), "router": "dualmap", "probe_interval_s": 0.2, "num_replicas": 1},
                port=port, num_cpus=2, haproxy=False)  # Python proxy: binds loopback only
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_local()
