"""The discrete-event loop of the simulator, against a tiny fake engine whose timing is exact."""

from collections import deque
from dataclasses import replace

import pytest

from fleetgate.loadgen.simulate import (
    SimConfig,
    SimRequest,
    Simulation,
    find_capacity,
    ideal_prefix_hit_ratio,
    prepare,
    simulate,
)
from fleetgate.loadgen.traces import TraceRequest
from fleetgate.pools.emulator.engine import EngineStats, RequestStats, StepOutput
from fleetgate.router.routing.base import RouteDecision, resends
from fleetgate.router.routing.common import NoHooks, decide

PREFILL_S_PER_TOKEN = 0.001
DECODE_S = 0.01


class FakeEngine:
    """One request at a time, FIFO: a prefill step of tokens x 1 ms (emits the first token), then
    one 10 ms step per further output token. Nothing is cached."""

    max_model_len = 1000

    def __init__(self, profile) -> None:
        self.queue: deque = deque()
        self.current = None  # [request, tokens emitted, first_token_s]

    def add(self, request) -> None:
        self.queue.append(request)

    def abort(self, request_id, now_s=None):
        for request in self.queue:
            if request.request_id == request_id:
                self.queue.remove(request)
                return RequestStats(request_id, request.arrival_s, None, now_s or 0.0, request.prompt_tokens, 0, 0, 0, "abort")
        return None

    def has_work(self) -> bool:
        return bool(self.queue) or self.current is not None

    def step(self, now_s):
        if self.current is None:
            if not self.queue:
                return StepOutput(0.0, {}, [])
            request = self.queue.popleft()
            duration = request.prompt_tokens * PREFILL_S_PER_TOKEN
            self.current = [request, 1, now_s + duration]
        else:
            duration = DECODE_S
            self.current[1] += 1
        request, emitted, first_s = self.current
        finished = []
        if emitted >= request.max_tokens:
            finished.append(RequestStats(request.request_id, request.arrival_s, first_s, now_s + duration, request.prompt_tokens, 0, emitted, 0, "length"))
            self.current = None
        return StepOutput(duration, {request.request_id: 1}, finished)

    def stats(self):
        running = 1 if self.current else 0
        return EngineStats(running, len(self.queue), 0.0, 0, 0, 0, 0, 0, 0, 0)


def reqs(*specs):
    """(arrival_s, prompt_tokens, output_tokens) -> SimRequests with unique hashes."""
    return [SimRequest(f"r{i}", a, p, o, (i + 1,), (i + 1,)) for i, (a, p, o) in enumerate(specs)]


def run(requests, router="round-robin", instances=1, **config):
    return simulate(requests, SimConfig(router=router, instances=instances, **config), engine_factory=FakeEngine)


def test_queueing_on_one_instance_is_exact():
    result = run(reqs((0.0, 100, 3), (0.0, 200, 1)), ttft_slo_s=0.2)
    # r0: first token at 0.1, done at 0.12; r1 starts at 0.12, first token at 0.32
    assert result.ttft_p50_ms == pytest.approx(100.0)
    assert result.ttft_p99_ms == pytest.approx(320.0)
    assert result.slo_attainment == 0.5
    assert result.tpot_p50_ms == pytest.approx(10.0)
    assert result.virtual_s == pytest.approx(0.32)


def test_round_robin_spreads_and_busy_time_is_balanced():
    result = run(reqs(*[(0.0, 100, 1)] * 8), instances=4)
    assert result.ttft_p99_ms == pytest.approx(200.0)  # two per instance
    assert result.load_imbalance == pytest.approx(1.0)
    assert result.reasons == {"rotation": 8}


def test_prompts_over_max_model_len_are_rejected_and_excluded():
    result = run(reqs((0.0, 100, 1), (0.0, 5000, 1)))
    assert (result.requests, result.rejected) == (1, 1)
    assert result.slo_attainment == 1.0


def test_rate_scale_compresses_arrivals():
    requests = reqs((0.0, 100, 1), (1.0, 100, 1))
    assert run(requests, rate_scale=1.0).ttft_p99_ms == pytest.approx(100.0)
    assert run(requests, rate_scale=20.0).ttft_p99_ms == pytest.approx(150.0)  # arrives at 0.05, waits 0.05


class SpyRouter(NoHooks):
    """Sends everything to the first instance and records what it saw."""

    name = "spy"

    def __init__(self, resend_once: bool = False) -> None:
        self.seen = []
        self.resend_once = resend_once
        self.events = []

    def route(self, request, instances, now_s):
        self.seen.append((now_s, [(v.waiting, v.running, v.local_inflight, v.local_queued_prefill_tokens) for v in instances]))
        return decide(instances[0], instances, "first")

    def on_dispatch(self, request, endpoint, now_s):
        self.events.append(("dispatch", request.request_id, endpoint.name))

    def on_finish(self, request, endpoint, now_s, ok):
        self.events.append(("finish", request.request_id, endpoint.name, ok))

    def resend(self, request, current, instances, now_s):
        if not self.resend_once or current.name != instances[0].name or request.request_id != "r2":
            return None
        self.resend_once = False
        return RouteDecision((instances[1].endpoint, current), "resend")


def spy_run(router, requests, instances=2):
    sim = Simulation(requests, SimConfig(router="round-robin", instances=instances), engine_factory=FakeEngine)
    sim.router, sim._resender = router, (router if resends(router) else None)
    return sim, sim.run()


def test_views_are_scraped_every_half_second_but_local_counts_are_exact():
    router = SpyRouter()
    spy_run(router, reqs((0.0, 900, 2), (0.2, 10, 1), (0.6, 10, 1)))
    (_, at0), (_, at02), (_, at06) = router.seen
    assert at0[0] == (0, 0, 0, 0)
    assert at02[0] == (0, 0, 1, 900)  # scrape at 0 saw nothing yet; we know we sent one
    assert at06[0] == (1, 1, 2, 910)  # scrape at 0.5: r0 running, r1 waiting


def test_a_resent_request_moves_once_and_keeps_its_arrival_time():
    router = SpyRouter(resend_once=True)
    sim, result = spy_run(router, reqs((0.0, 900, 1), (0.0, 900, 1), (0.1, 100, 1)))
    assert result.resent == 1 and result.reasons["resend"] == 1
    assert ("finish", "r2", "h100-0", False) in router.events
    assert ("dispatch", "r2", "h100-1") in router.events
    # r2 re-sent at the 0.5 s scrape to the idle instance: first token at 0.6, ttft from 0.1
    ttfts = {s.request_id: s.ttft_s for s in sim.finished}
    assert ttfts == pytest.approx({"r0": 0.9, "r1": 1.8, "r2": 0.5})


def test_capacity_is_bracketed_within_tolerance():
    requests = reqs(*[(i * 0.5, 100, 1) for i in range(200)])  # 2 rps of 0.1 s jobs on one instance
    config = SimConfig(router="round-robin", instances=1, ttft_slo_s=0.3)
    cap = find_capacity(requests, config, tolerance=0.05, engine_factory=FakeEngine)
    assert cap.result.slo_attainment >= 0.9
    above = simulate(requests, replace(config, rate_scale=cap.rate_scale * 1.05), engine_factory=FakeEngine)
    assert above.slo_attainment < 0.9
    assert cap.capacity_rps == pytest.approx(cap.rate_scale * 200 / 99.5)


def test_ideal_hit_ratio_counts_blocks_seen_before_but_not_the_last_token():
    a = SimRequest("a", 0.0, 64, 1, (1, 2, 3, 4), ())
    b = SimRequest("b", 1.0, 64, 1, (1, 2, 9, 10), ())
    c = SimRequest("c", 2.0, 64, 1, (1, 2, 3, 4), ())
    # b hits 2 blocks (32 tokens), c hits 3 of 4 (the last token is always recomputed)
    assert ideal_prefix_hit_ratio([a, b, c], 1000) == pytest.approx((32 + 48) / 192)


def test_prepare_hashes_shared_prefixes_alike():
    shared = "s" * 1024
    one, two = prepare([TraceRequest(0.0, shared + "a" * 100, None, 5), TraceRequest(1.0, None, ({"role": "user", "content": shared},), 5)])
    assert one.prompt_tokens == 281 and one.kv_hashes[:16] == prepare([TraceRequest(0.0, shared, None, 1)])[0].kv_hashes[:16]
    assert two.prefix_hashes[0] != one.prefix_hashes[0]  # chat rendering adds the role


def test_pooled_cache_bound_evicts_least_recent_prefixes():
    a = SimRequest("a", 0.0, 64, 1, (1, 2, 3, 4), ())
    b = SimRequest("b", 1.0, 64, 1, (5, 6, 7, 8), ())
    c = SimRequest("c", 2.0, 64, 1, (1, 2, 3, 4), ())
    assert ideal_prefix_hit_ratio([a, b, c], 1000, cache_tokens=16 * 8) == pytest.approx(48 / 192)
    # b pushed out a's two deepest blocks (leaves go first); its first two still hit
    assert ideal_prefix_hit_ratio([a, b, c], 1000, cache_tokens=16 * 6) == pytest.approx(32 / 192)
