"""Precise mode end to end on loopback: an emulator process started by `fleet up` publishes KV
events over real ZMQ; the registry's view of it learns a chat prompt's blocks once it is served."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Callable

import aiohttp
import pytest
from support.servers import free_port

from fleetgate.core.request import InferenceRequest
from fleetgate.pools.config import load_fleet
from fleetgate.pools.emulator.launcher import fleet_down, fleet_up
from fleetgate.pools.registry import FleetRegistry, HealthPolicy

pytestmark = pytest.mark.integration


async def until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Wait (bounded) for a condition the event stream makes true."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_served_prompt_blocks_become_matched_in_the_registry_view(tmp_path: Path) -> None:
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(f"pools:\n  - {{name: chat, model: m, gpu: l4, count: 1, base_port: {free_port()}, "
                          f"kv_events_base_port: {free_port()}}}\n")
    state_dir = tmp_path / "state"
    await asyncio.to_thread(fleet_up, str(fleet_file), time_scale=0.1, state_dir=state_dir)
    try:
        registry = FleetRegistry(load_fleet(fleet_file).to_pools(), policy=HealthPolicy(0.2, 1.0, 1.0))
        endpoint = registry.endpoints[0]
        assert endpoint.kv_events is not None
        async with aiohttp.ClientSession() as session:
            runner = asyncio.create_task(registry.run(session))
            try:
                view = None
                await until(lambda: (view := registry.kv_view(endpoint)) is not None and view.live)
                view = registry.kv_view(endpoint)
                assert view is not None
                messages = ({"role": "system", "content": "You answer tersely. " * 30},
                            {"role": "user", "content": "What is a prefix cache?"})
                request = InferenceRequest("r1", "chat", "m", {}, False, messages=messages)
                hashes = registry.kv_hashes("chat", request)
                assert len(hashes) > 8 and view.matched_blocks(hashes) == 0
                body = {"model": "m", "messages": list(messages), "max_tokens": 4}
                async with session.post(endpoint.url + "/v1/chat/completions", json=body) as response:
                    assert response.status == 200
                await until(lambda: view.matched_blocks(hashes) == len(hashes))
                status = registry.kv_status()[0]
                assert status.live and status.blocks >= len(hashes) and status.events >= 1
            finally:
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)
            assert not view.live  # the subscription stopped with the run loop
    finally:
        await asyncio.to_thread(fleet_down, state_dir)
