"""DualMap v2: precise mode, placement of uncached prompts, scrape staleness, lazy fallbacks."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from support.routing_views import pool, request, with_load

from fleetgate.core.tokens import kv_block_hashes
from fleetgate.router.routing.base import RouteDecision
from fleetgate.router.routing.dualmap import DualMap
from fleetgate.router.routing.estimate import TtftEstimator


@dataclass
class FakeKv:
    """A KvView over a plain set of block hashes (the registry's is fed by KV events)."""

    blocks: set[int]
    live: bool = True
    block_tokens: int = 16

    def matched_blocks(self, kv_hashes) -> int:
        n = 0
        for h in kv_hashes:
            if h not in self.blocks:
                break
            n += 1
        return n


def precise(text: str, request_id: str = "r", **fields):
    return request(text, request_id, kv_hashes=tuple(kv_block_hashes(text)), **fields)


def test_precise_mode_reads_the_instances_own_blocks_not_what_this_replica_sent():
    text = "a document another replica sent " * 100
    req = precise(text + "question")
    holder = set(kv_block_hashes(text))
    views = [replace(v, kv=FakeKv(holder if v.name == "i5" else set())) for v in pool(8)]
    decision = DualMap().route(req, views, 0.0)
    assert decision.chosen.name == "i5"  # nobody told this replica; the events did
    stale = [replace(v, kv=replace(v.kv, live=False)) for v in views]
    estimator = TtftEstimator()
    assert estimator.cached_tokens(req, views[5]) >= len(holder) * 16 - 16
    assert estimator.cached_tokens(req, stale[5]) == 0  # not live: back to approximate mode (nothing sent)


@pytest.mark.parametrize(("place", "live", "anywhere"), [("auto", True, True), ("auto", False, False), ("pool", False, True), ("pair", True, False)])
def test_an_uncached_prompt_goes_anywhere_only_where_every_replica_would_see_it(place, live, anywhere):
    router = DualMap(place_uncached=place, hotspot_floor=1000)
    req = precise("a brand new conversation " * 80, "new")
    views = [replace(v, kv=FakeKv(set(), live=live)) for v in pool(8)]
    c1, c2 = router._rings.get([v.endpoint for v in views]).pair(router._key(req, 8))
    busy = {name: {"local_queued_prefill_tokens": 40000, "local_inflight": 3} for name in (c1, c2)}
    views = [replace(v, **busy.get(v.name, {})) for v in views]
    decision = router.route(req, views, 0.0)
    assert (decision.reason == "anywhere") is anywhere
    assert (decision.chosen.name not in (c1, c2)) is anywhere


def test_a_prompt_queued_but_not_yet_prefilled_counts_as_cached_in_precise_mode():
    """Its blocks are not in the KV events until it is prefilled; a follow-up must still meet it."""
    router = DualMap()
    views = [replace(v, kv=FakeKv(set())) for v in pool(8)]
    first = precise("turn one of a long conversation " * 100, "t1")
    decision = router.route(first, views, 0.0)
    router.on_dispatch(first, decision.chosen, 0.0)  # queued there, no first token yet
    second = precise("turn one of a long conversation " * 100 + "and turn two", "t2")
    assert router.route(second, views, 0.1).chosen == decision.chosen


def test_other_replicas_work_is_what_vllm_reported_minus_ours_at_the_scrapes_time():
    estimator = TtftEstimator()
    view = pool(1)[0]
    reqs = [request(f"prompt {i} " * 400, f"r{i}") for i in range(4)]
    for r in reqs:
        estimator.on_dispatch(r, view.endpoint, 1.0)  # 4 of ours queued at t=1
    for r in reqs:
        estimator.on_prefilled(r, view.endpoint, 2.0)  # all prefilled at t=2
    probe = request("probe " * 400, "p")
    scraped_then = replace(view, waiting=4, scraped_at_s=1.5)  # the scrape saw our 4 waiting
    assert estimator.estimate(probe, scraped_then).ttft_s == pytest.approx(estimator.estimate(probe, view).ttft_s)
    others = replace(view, waiting=6, scraped_at_s=1.5)  # 2 more than ours: another replica's
    assert estimator.estimate(probe, others).ttft_s > estimator.estimate(probe, view).ttft_s


def test_fallbacks_past_the_head_are_ranked_only_when_needed():
    ranked = []

    def tail():
        ranked.append(True)
        return tuple(v.endpoint for v in pool(4)[2:])

    views = pool(4)
    decision = RouteDecision((views[0].endpoint, views[1].endpoint), "x", tail=tail)
    assert [e.name for e in decision.attempts(2)] == ["i0", "i1"] and not ranked
    assert [e.name for e in decision.attempts(3)] == ["i0", "i1", "i2"] and ranked
    assert [e.name for e in decision.ordered] == ["i0", "i1", "i2", "i3"]
    busy = with_load(pool(8), "i0", running=5)
    assert len(DualMap().route(request("x " * 300), busy, 0.0).ordered) == 8
