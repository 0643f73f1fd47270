"""DualMap rules, one test each, table-driven, with a manual clock."""

from collections import Counter

import pytest
from support.routing_views import names, pool, request, with_load

from fleetgate.core.clock import ManualClock
from fleetgate.router.routing.base import RouteRequest
from fleetgate.router.routing.dualmap import DualMap
from fleetgate.router.routing.estimate import TtftEstimator
from fleetgate.router.routing.keylen import AdaptiveKeyLength
from fleetgate.router.routing.registry import make_router


def pair_of(router: DualMap, req: RouteRequest, views) -> tuple[str, str]:
    """The candidate pair, read off an idle decision (chosen = c1 on a tie, then c2)."""
    decision = router.route(req, pool(len(views)), 0.0)
    assert decision.reason == "affinity-c1"
    return decision.ordered[0].name, decision.ordered[1].name


def test_two_independently_built_routers_agree():
    a, b = make_router("dualmap"), make_router("dualmap")
    views = pool(16, i3={"running": 2}, i7={"local_queued_prefill_tokens": 9000, "local_inflight": 1})
    for k in range(300):
        req = request(f"tenant {k % 37} system prompt " * 20 + f"question {k}", f"r{k}")
        assert names(a.route(req, views, 0.0)) == names(b.route(req, views, 0.0))


def test_distinct_prefixes_spread_over_64_instances():
    router = DualMap(adaptive_keys=False)
    views = pool(64)
    total = 64 * 50
    counts = Counter(router.route(request(f"doc {k} " * 50, f"r{k}"), views, 0.0).chosen.name for k in range(total))
    expected = total / 64
    chi2 = sum((counts.get(v.name, 0) - expected) ** 2 / expected for v in views)
    assert chi2 < 103.4  # 63 degrees of freedom, p = 0.001


@pytest.mark.parametrize(
    ("c1_load", "c2_load", "winner", "reason"),
    [
        ({}, {}, 0, "affinity-c1"),  # tie -> c1
        ({"local_queued_prefill_tokens": 40000, "local_inflight": 3}, {}, 1, "affinity-c2"),
        ({}, {"local_queued_prefill_tokens": 40000, "local_inflight": 3}, 0, "affinity-c1"),
        ({"running": 3}, {"running": 1}, 1, "affinity-c2"),  # bigger decode batch -> slower prefill steps
    ],
)
def test_the_candidate_with_the_lower_estimate_wins(c1_load, c2_load, winner, reason):
    router = DualMap()
    req = request("a long shared prefix " * 60, "r1")
    c1, c2 = pair_of(router, req, pool(8))
    views = pool(8, **{c1: c1_load, c2: c2_load})
    decision = router.route(req, views, 0.0)
    assert decision.chosen.name == (c1, c2)[winner] and decision.reason == reason
    assert names(decision)[1] == (c1, c2)[1 - winner]


def test_the_candidate_holding_the_prefix_wins_despite_a_small_queue():
    router = DualMap()
    prefix = "shared document " * 500  # ~2000 tokens
    warm = request(prefix + "first question", "warm")
    c1, c2 = pair_of(router, warm, pool(8))
    views = pool(8)
    router.on_dispatch(warm, views[int(c2[1:])].endpoint, 0.0)
    router.on_first_token(warm, views[int(c2[1:])].endpoint, 0.1)
    busy = with_load(views, c1, local_queued_prefill_tokens=100, local_inflight=1)
    assert router.route(request(prefix + "second question", "r2"), busy, 1.0).chosen.name == c2


@pytest.mark.parametrize(
    ("slo_s", "expect_fallback"),
    [(None, False), (10.0, False), (0.5, True), (0.01, False)],  # 10 ms: nobody can, keep affinity
)
def test_both_candidates_over_slo_fall_back_to_the_lowest_estimate(slo_s, expect_fallback):
    router = DualMap(adaptive_keys=False)
    req = request("prompt " * 400, "r1", ttft_slo_s=slo_s)  # ~700 tokens
    c1, c2 = pair_of(router, req, pool(8))
    heavy = {"local_queued_prefill_tokens": 60000, "local_inflight": 6}  # ~2 s of prefill queued
    others = [f"i{i}" for i in range(8) if f"i{i}" not in (c1, c2)]
    light = others[3]
    loads = {c1: heavy, c2: heavy, **{n: {"local_queued_prefill_tokens": 12000, "local_inflight": 2} for n in others if n != light}}
    decision = router.route(req, pool(8, **loads), 0.0)
    if expect_fallback:
        assert decision.reason == "slo-fallback" and decision.chosen.name == light
        assert set(names(decision)[1:3]) == {c1, c2}
    else:
        assert decision.reason.startswith("affinity") and decision.chosen.name in (c1, c2)


def test_a_hotspots_keys_move_to_their_other_candidate_and_stay_until_the_ttl():
    clock = ManualClock()
    router = DualMap(hotspot_factor=1.5, hotspot_floor=4, steer_ttl_s=30.0)
    prefix = "hot tenant prompt " * 30  # the key's two blocks; each prompt's long tail is its own

    def fresh(i: int):
        return request(prefix + f"question {i} " * 300, f"r{i}")

    c1, c2 = pair_of(router, fresh(0), pool(8))
    views = pool(8)
    # c1 holds the key's blocks (under 30% of the prompt, so not held) but runs 30 requests:
    # mean 3.75, threshold max(5.6, 7.75)
    router.on_dispatch(fresh(0), views[int(c1[1:])].endpoint, clock())
    router.on_first_token(fresh(0), views[int(c1[1:])].endpoint, clock())
    hot = with_load(views, c1, running=30)
    decision = router.route(fresh(1), hot, clock())
    assert decision.chosen.name == c2 and decision.reason == "hotspot"
    clock.advance(10.0)  # c1 cooled down, but the key stays steered (its cache now builds on c2)
    decision = router.route(fresh(2), views, clock())
    assert decision.chosen.name == c2 and decision.reason == "hotspot"
    clock.advance(25.0)  # past the TTL: back to the better estimate
    assert router.route(fresh(3), views, clock()).chosen.name == c1


def test_a_held_prefix_stays_on_its_holder_even_when_it_is_busy():
    """Rule 1: where at least `affinity_ratio` of the prompt is cached, the request goes there
    whatever the queue: recomputing a long prefix elsewhere costs the fleet more than the wait."""
    router = DualMap()
    prefix = "a long shared conversation " * 200
    first = request(prefix + "turn 1", "r0")
    c1, c2 = pair_of(router, first, pool(8))
    views = pool(8)
    router.on_dispatch(first, views[int(c1[1:])].endpoint, 0.0)
    router.on_first_token(first, views[int(c1[1:])].endpoint, 0.0)
    busy = with_load(views, c1, running=30, waiting=10)
    decision = router.route(request(prefix + "turn 2", "r1"), busy, 0.0)
    assert decision.chosen.name == c1 and decision.reason == "affinity-c1"
    held_less = DualMap(affinity_ratio=1.0)  # nothing counts as held: the busy holder is a hotspot
    held_less.on_dispatch(first, views[int(c1[1:])].endpoint, 0.0)
    held_less.on_first_token(first, views[int(c1[1:])].endpoint, 0.0)
    assert held_less.route(request(prefix + "turn 2", "r1"), busy, 0.0).chosen.name == c2


def test_a_queued_request_is_resent_at_most_once():
    clock = ManualClock()
    router = DualMap()
    req = request("queued prompt " * 300, "r1")
    c1, c2 = pair_of(router, req, pool(8))
    views = pool(8)
    router.route(req, views, clock())
    router.on_dispatch(req, views[int(c1[1:])].endpoint, clock())
    hot_c1 = with_load(views, c1, running=30, waiting=20, local_inflight=8, local_queued_prefill_tokens=30000)
    assert router.resend(req, views[int(c1[1:])].endpoint, views, clock()) is None  # c1 not hot: stay
    decision = router.resend(req, views[int(c1[1:])].endpoint, hot_c1, clock())
    assert decision is not None and decision.chosen.name == c2 and decision.reason == "resend"
    router.on_finish(req, views[int(c1[1:])].endpoint, clock(), False)
    router.on_dispatch(req, decision.chosen, clock())
    hot_c2 = with_load(views, c2, running=30, waiting=20, local_inflight=1)
    clock.advance(1.0)
    assert router.resend(req, views[int(c2[1:])].endpoint, hot_c2, clock()) is None  # never twice
    assert router.resend(req, views[int(c1[1:])].endpoint, hot_c1, clock()) is None


def test_scale_events_move_about_two_over_n_pairs():
    router = DualMap(adaptive_keys=False)
    reqs = [request(f"conversation {k} " * 30, f"r{k}") for k in range(3000)]

    def pairs(views):
        return [frozenset(names(router.route(r, views, 0.0))[:2]) for r in reqs]

    before, after = pairs(pool(8)), pairs(pool(9))
    moved = sum(a != b for a, b in zip(before, after)) / len(reqs)
    assert 0.7 * 2 / 9 < moved < 1.3 * 2 / 9


def test_session_id_can_be_the_key():
    router = DualMap(use_session_key=True)
    views = pool(16)
    chosen = {router.route(request(f"prompt {k} " * 30, f"r{k}", session_id="s1"), views, 0.0).chosen.name for k in range(20)}
    assert len(chosen) == 1


@pytest.mark.parametrize(
    ("shared_share", "expect_deeper"),
    [(1.0, True), (0.05, False)],
)
def test_adaptive_key_length_splits_only_hot_prefixes(shared_share, expect_deeper):
    keys = AdaptiveKeyLength(half_life_requests=128, min_count=8)
    system = "common system prompt " * 30  # > 2 blocks
    depths = []
    for k in range(400):
        shared = (k % 100) < shared_share * 100
        text = (system if shared else f"unique {k} " * 60) + f"user {k} asks something different " * 20
        depths.append(keys.key_blocks(request(text, f"r{k}", key_blocks=2), 8))
    assert (max(depths[100:]) > 2) is expect_deeper


def test_hot_prefix_spreads_over_more_than_one_pair():
    router = DualMap()
    system = "common system prompt " * 30
    views = pool(8)
    chosen = Counter()
    for k in range(400):
        req = request(system + f"user {k} asks something different " * 20, f"r{k}")
        chosen[router.route(req, views, 0.0).chosen.name] += 1
    assert len(chosen) >= 4


@pytest.mark.parametrize(
    ("fields", "slower"),
    [
        ({"local_queued_prefill_tokens": 8000, "local_inflight": 1}, True),
        ({"running": 40, "kv_usage_ratio": 0.5}, True),
        ({"waiting": 5}, False),  # others' waiting requests count only once we know a mean size
    ],
)
def test_estimate_grows_with_queued_work_and_decode_batch(fields, slower):
    estimator = TtftEstimator()
    req = request("p " * 2000)
    idle, busy = pool(2, i1=fields)
    assert (estimator.estimate(req, busy).ttft_s > estimator.estimate(req, idle).ttft_s) is slower


def test_estimate_discounts_the_expected_cached_prefix_and_cached_work_queued_ahead():
    estimator = TtftEstimator()
    view = pool(1)[0]
    first = request("doc " * 4000 + "q1", "r1")
    cold = estimator.estimate(first, view)
    estimator.on_dispatch(first, view.endpoint, 0.0)
    second = request("doc " * 4000 + "q2", "r2")
    warm = estimator.estimate(second, view)
    assert warm.cached_tokens >= 3900 and warm.ttft_s < cold.ttft_s / 5
    estimator.on_dispatch(second, view.endpoint, 0.0)  # queued behind `first`, almost all cached
    queued = with_load([view], "i0", local_queued_prefill_tokens=first.prompt_tokens + second.prompt_tokens, local_inflight=2)[0]
    third = request("doc " * 4000 + "q3", "r3")
    # ahead of `third`: first's 4000 uncached tokens, not the 8000 raw prompt tokens queued
    assert estimator.estimate(third, queued).ttft_s == pytest.approx(cold.ttft_s + warm.ttft_s, rel=0.2)
    estimator.on_prefilled(first, view.endpoint, 0.0)
    drained = with_load([view], "i0", local_queued_prefill_tokens=second.prompt_tokens, local_inflight=2)[0]
    assert estimator.estimate(third, drained).ttft_s < cold.ttft_s / 5


@pytest.mark.parametrize(("work_weight", "expect_holder"), [(0.0, False), (1.0, True)])
def test_work_weight_charges_recomputing_a_prefix_the_other_candidate_holds(work_weight, expect_holder):
    """Below `affinity_ratio` (here: always) candidates compete on score; work_weight prices the recompute."""
    router = DualMap(work_weight=work_weight, affinity_ratio=1.01)
    prefix = "shared document " * 500  # ~2000 tokens
    warm = request(prefix + "first question", "warm")
    c1, c2 = pair_of(router, warm, pool(8))
    views = pool(8)
    router.on_dispatch(warm, views[int(c1[1:])].endpoint, 0.0)
    router.on_first_token(warm, views[int(c1[1:])].endpoint, 0.1)
    # c1 holds the prefix but has 3000 tokens queued: its TTFT is a little worse than c2's cold one
    busy = with_load(views, c1, local_queued_prefill_tokens=3000, local_inflight=1)
    decision = router.route(request(prefix + "second question", "r2"), busy, 1.0)
    assert (decision.chosen.name == c1) is expect_holder


@pytest.mark.parametrize(("follow_holder", "expect_holder"), [(True, True), (False, False)])
def test_a_prefix_displaced_outside_the_pair_is_followed(follow_holder, expect_holder):
    router = DualMap(follow_holder=follow_holder)
    prefix = "long shared document " * 1000  # ~5000 tokens
    warm = request(prefix + "first question", "warm")
    c1, c2 = pair_of(router, warm, pool(8))
    views = pool(8)
    outsider = next(v for v in views if v.name not in (c1, c2))
    router.on_dispatch(warm, outsider.endpoint, 0.0)  # e.g. an SLO fallback put it there
    router.on_first_token(warm, outsider.endpoint, 0.1)
    decision = router.route(request(prefix + "second question", "r2"), views, 1.0)
    assert (decision.chosen.name == outsider.name) is expect_holder
    assert (decision.reason == "holder") is expect_holder


def test_without_prefix_reuse_requests_go_to_the_lowest_estimate_in_the_pool():
    router = DualMap(reuse_alpha=0.2)
    views = pool(8)
    for k in range(40):  # one-shot prompts: nothing is ever found cached
        router.route(request(f"unique prompt {k} " * 40, f"w{k}"), views, 0.0)
    req = request("yet another unique prompt " * 40, "r")
    c1, c2 = pair_of(DualMap(), req, pool(8))
    busy = {name: {"local_queued_prefill_tokens": 20000, "local_inflight": 2} for name in [v.name for v in views] if name != "i5"}
    decision = router.route(req, pool(8, **busy), 1.0)
    assert decision.chosen.name == "i5"
    assert decision.reason == ("no-reuse" if "i5" not in (c1, c2) else f"affinity-c{(c1, c2).index('i5') + 1}")


def test_prefix_reuse_keeps_affinity_over_a_less_loaded_outsider():
    router = DualMap(reuse_alpha=0.2)
    prefix = "tenant system prompt " * 200
    views = pool(8)
    for k in range(40):  # every prompt shares the prefix: reuse is high
        req = request(prefix + f"question {k}", f"w{k}")
        decision = router.route(req, views, 0.0)
        router.on_dispatch(req, decision.chosen, 0.0)
        router.on_first_token(req, decision.chosen, 0.0)
    req = request(prefix + "one more question", "r")
    holders = {v.name for v in views if router.estimator.cached_tokens(req, v) > 0}
    busy = {name: {"local_queued_prefill_tokens": 2000, "local_inflight": 1} for name in holders}
    assert router.route(req, pool(8, **busy), 1.0).chosen.name in holders


@pytest.mark.parametrize("calibrate", [True, False])
def test_calibration_learns_an_instance_slower_than_its_profile(calibrate):
    """With `calibrate`, streamed TTFTs three times the estimate raise that instance's estimate;
    a non-streamed answer (its "first token" is the whole answer) teaches nothing."""
    router = DualMap(calibrate=calibrate)
    views = pool(2)
    probe = request("calibration probe " * 400, "probe")
    before = router.estimator.estimate(probe, views[0]).ttft_s
    for i in range(40):
        req = request(f"prompt {i} " * 400, f"r{i}")
        decision = router.route(req, views, float(i))
        view = next(v for v in views if v.name == decision.chosen.name)
        expected_s = router.estimator.estimate(req, view).ttft_s
        router.on_dispatch(req, decision.chosen, float(i))
        router.on_first_token(req, decision.chosen, float(i) + 3 * expected_s)
        router.on_finish(req, decision.chosen, float(i) + 3 * expected_s, True)
    after = router.estimator.estimate(probe, views[0]).ttft_s
    assert (after > 2 * before) is calibrate
    quiet = DualMap(calibrate=True)
    for i in range(40):
        req = request(f"prompt {i} " * 400, f"q{i}", stream=False)
        decision = quiet.route(req, views, float(i))
        quiet.on_dispatch(req, decision.chosen, float(i))
        quiet.on_first_token(req, decision.chosen, float(i) + 10.0)
    assert quiet.estimator.estimate(probe, views[0]).ttft_s == pytest.approx(before)
