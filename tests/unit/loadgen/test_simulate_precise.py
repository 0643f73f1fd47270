"""Precise mode and the oracle in the simulator, against the real emulated engine, in virtual time."""

from __future__ import annotations

import pytest

from fleetgate.loadgen.simulate import SimConfig, SimRequest, Simulation, prepare, simulate, split_router_name
from fleetgate.loadgen.traces import SyntheticSpec, TraceRequest, synthetic_shared_prefix
from fleetgate.router.routing.common import NoHooks, decide


class FirstInstance(NoHooks):
    """Sends everything to the first instance and records what each decision saw."""

    name = "first"

    def __init__(self) -> None:
        self.seen: list[tuple[tuple[int, ...], list[int | None]]] = []

    def route(self, request, instances, now_s):
        matched = [None if v.kv is None else v.kv.matched_blocks(request.kv_hashes) for v in instances]
        self.seen.append((request.kv_hashes, matched))
        return decide(instances[0], instances, "first")


def two_same_prompts() -> list[SimRequest]:
    text = "the same long system prompt " * 80  # 560 tokens: 35 full KV blocks
    return prepare([TraceRequest(0.0, text, None, 4), TraceRequest(10.0, text, None, 4)])


def spy(router_name: str) -> tuple[Simulation, FirstInstance]:
    sim = Simulation(two_same_prompts(), SimConfig(router=router_name, instances=2))
    sim.router = FirstInstance()
    sim.run()
    return sim, sim.router


def test_precise_views_read_what_the_engine_cached() -> None:
    sim, router = spy("round-robin+precise")
    (first_hashes, first_seen), (second_hashes, second_seen) = router.seen
    assert first_hashes == sim.requests[0].kv_hashes and len(first_hashes) == 35
    assert first_seen == [0, 0]
    assert second_seen == [35, 0]  # the first request's prompt, cached on the instance that served it
    engines = [inst.engine for inst in sim.instances]
    assert [e.matched_blocks(second_hashes) for e in engines] == second_seen
    assert sim.finished[1].cached_tokens == 34 * 16  # the engine agrees: all but the last block hit


def test_approximate_mode_carries_no_kv() -> None:
    _, router = spy("round-robin")
    assert [seen for seen in router.seen] == [((), [None, None]), ((), [None, None])]


def test_router_names() -> None:
    assert split_router_name("dualmap+precise") == ("dualmap", True)
    assert split_router_name("dualmap") == ("dualmap", False)
    assert split_router_name("oracle") == ("oracle", True)
    with pytest.raises(ValueError, match="unknown router"):
        split_router_name("oracle+precise")


def test_oracle_sends_a_twin_behind_its_waiting_sibling() -> None:
    def doc(seed: str) -> str:
        return f"document {seed} " * 3000  # 8,250 tokens: one chunked-prefill step on an H100

    # r0 and r1 keep both instances busy; r2 waits behind one of them, and its twin r3 comes next:
    # no engine holds the prompt yet, only the oracle's book of what it sent says where it will be
    requests = prepare([TraceRequest(t, doc(seed), None, 2) for t, seed in ((0.0, "a"), (0.0, "b"), (0.001, "p"), (0.002, "p"))])
    sim = Simulation(requests, SimConfig(router="oracle", instances=2))
    result = sim.run()
    assert result.reasons == {"oracle": 4}
    cached = {s.request_id: s.cached_tokens for s in sim.finished}
    assert cached == {"r0": 0, "r1": 0, "r2": 0, "r3": 8128}


def test_oracle_beats_round_robin_on_shared_prefixes_that_do_not_fit_everywhere() -> None:
    spec = SyntheticSpec(groups=8, prefix_tokens=4096, suffix_tokens=64, output_tokens=16, rate_per_s=40.0, count=240)
    requests = prepare(synthetic_shared_prefix(spec).requests)
    config = dict(instances=4, ttft_slo_s=0.5, kv_cache_tokens=16_384)  # two prefixes per instance
    oracle = simulate(requests, SimConfig(router="oracle", **config))
    rr = simulate(requests, SimConfig(router="round-robin", **config))
    assert oracle.requests == rr.requests == 240
    assert oracle.prefix_hit_ratio > rr.prefix_hit_ratio + 0.3
    assert oracle.ttft_p99_ms < rr.ttft_p99_ms
    assert oracle.slo_attainment >= rr.slo_attainment
