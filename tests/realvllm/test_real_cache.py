"""Prefix affinity against round-robin on real vLLM's own cache counters (a short slice of the
agent-session trace; deploy/vllm-cpu/cache_check.py runs the long one)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.gateway import MODEL
from support.servers import free_port

from fleetgate.loadgen.realcache import measure_router, select_slice
from fleetgate.pools.realvllm import VllmFleet, VllmSettings

pytestmark = pytest.mark.realvllm

TRACE = Path(__file__).resolve().parents[3] / "shared" / "traces" / "agent_sessions"
MAX_MODEL_LEN = 4096


async def test_dualmap_beats_round_robin_on_real_vllm_cache(real_vllm: VllmFleet) -> None:
    chosen = select_slice(TRACE, VllmSettings().model_dir, max_requests=40, max_gap_s=0.5, output_cap_tokens=16,
                          max_model_len=MAX_MODEL_LEN)
    assert len(chosen.requests) == 40 and chosen.sessions >= 5
    runs = {router: await measure_router(router, real_vllm.urls, MODEL, chosen.requests, port=free_port(),
                                         max_model_len=MAX_MODEL_LEN)
            for router in ("round-robin", "dualmap")}
    assert all(run.errors == 0 and sum(run.requests_per_instance) == 40 for run in runs.values()), runs
    assert runs["round-robin"].requests_per_instance == (20, 20)
    assert runs["dualmap"].hit_ratio > runs["round-robin"].hit_ratio + 0.1, runs
