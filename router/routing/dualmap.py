"""DualMap: two hash-chosen candidates per prefix key, the one with the lower estimated TTFT wins.

Per request (DESIGN.md, "Prefix affinity: our DualMap design"):
1. Key: the prefix chain hash at `key_blocks` blocks (adaptive per category, keylen.py), or the
   session id when `use_session_key` and the request has one.
2. Candidates: (c1, c2) from two consistent-hash rings with independent seeds (ring.py), so every
   replica derives the same pair with no shared state and a scale event moves ~2/N of keys.
3. Better candidate: the lower TTFT estimate (estimate.py) plus `work_weight` x the prefill time
   of the request's own uncached tokens there; ties go to c1. Reason affinity-c1/c2. Decided
   here: DESIGN.md says "the lower estimate", but that is greedy for this request only: a
   candidate without the prefix that is a little less busy wins, recomputes the prefix, and the
   GPU time it burns is queueing delay for every later request there (and a second copy of the
   prefix in the fleet's cache). Counting our own uncached prefill once more (work_weight 1)
   charges that marginal cost; on Mooncake it raised the hit ratio by ~4 points near capacity
   and the capacity itself by ~5% (docs/routing.md). work_weight 0 is DESIGN.md's rule. Without
   a prefix cached anywhere both candidates pay the same, so pure load balancing is unchanged.
   Decided here (`follow_holder`): when this replica last sent a longer prefix of the prompt to
   an instance outside the pair (an SLO fallback, a re-send or a scale event put it there), that
   instance competes on the same score, so the prefix is reused rather than recomputed on a
   candidate. Reason "holder". On Mooncake at a 1 s SLO: +4 points of hit ratio, +5% capacity.
4. Hotspot: an instance whose load exceeds `hotspot_factor` x the pool mean (and the mean by at
   least `hotspot_floor` requests, so an idle pool with loads 0/1/2 has no hotspot) does not take
   a key if its other candidate is not hot and meets the SLO; the key is then steered to the other
   candidate for `steer_ttl_s` so its cache builds in one place instead of flapping. Hot keys
   arrive most often, so they are the first to move. Reason "hotspot".
5. SLO fallback: when both candidates' estimates exceed the request's TTFT SLO, affinity is
   dropped for this request: the instance with the lowest estimate in the pool (reason
   "slo-fallback"). The estimate still counts each instance's expected cached prefix. Decided
   here: only when that instance is expected to meet the SLO; a request no instance can serve in
   time (a long uncached prompt) stays with its candidates, because moving it would not save its
   SLO but would write its prefix where its key's later requests will not look (measured on
   Mooncake: +2-3 points of prefix hit ratio at high load).
6. Cancel-and-resend: `resend()` tells the caller whether a request still queued (no first token)
   on an instance that became a hotspot should be cancelled and re-sent to its other candidate;
   at most once per request (a bounded set of re-sent ids).
`ordered` is the chosen instance, then the other candidate, then the rest by estimate (the
best RANKED_FALLBACKS ranked, the tail in pool order: see common.py).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

from pools.model import Endpoint
from router.routing.base import InstanceView, RouteDecision, RouteRequest
from router.routing.common import ranked
from router.routing.estimate import TtftEstimator
from router.routing.keylen import AdaptiveKeyLength
from router.routing.ring import Key, RingCache


class _BoundedSet:
    """Remembers the last `capacity` items (FIFO), enough for requests in flight."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, item: str) -> bool:
        return item in self._items

    def add(self, item: str) -> None:
        self._items[item] = None
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)


class DualMap:
    name = "dualmap"

    def __init__(
        self,
        seeds: tuple[int, int] = (0xD1A1, 0x3A9B),
        hotspot_factor: float = 1.5,
        hotspot_floor: int = 4,
        steer_ttl_s: float = 30.0,
        use_session_key: bool = False,
        adaptive_keys: bool = True,
        resend_margin_ratio: float = 0.5,
        enable_resend: bool = True,
        work_weight: float = 1.0,
        follow_holder: bool = True,

        cache_fill_ratio: float = 1.0,
        max_tracked: int = 65536,
    ) -> None:
        self.hotspot_factor = hotspot_factor
        self.hotspot_floor = hotspot_floor
        self.steer_ttl_s = steer_ttl_s
        self.use_session_key = use_session_key
        self.resend_margin_ratio = resend_margin_ratio
        self.enable_resend = enable_resend
        self.work_weight = work_weight
        self.follow_holder = follow_holder

        self.estimator = TtftEstimator(cache_fill_ratio=cache_fill_ratio)
        self.keys = AdaptiveKeyLength(max_keys=max_tracked) if adaptive_keys else None
        self.max_tracked = max_tracked
        self._rings = RingCache(seeds)
        self._steered: OrderedDict[Key, tuple[str, float]] = OrderedDict()  # key -> (instance, until_s)
        self._resent = _BoundedSet(max_tracked)
        self._keys_of: OrderedDict[str, Key] = OrderedDict()  # request id -> key, for resend()

    # -- routing ----------------------------------------------------------------------------

    def _key(self, request: RouteRequest, n_instances: int) -> Key:
        if self.use_session_key and request.session_id:
            return request.session_id
        if self.keys is not None:
            return self.keys.key(request, n_instances)
        hashes = request.prefix_hashes
        return hashes[min(len(hashes), max(1, request.key_blocks)) - 1] if hashes else request.request_id

    def _hot_threshold(self, instances: Sequence[InstanceView]) -> float:
        """Loads above this make an instance a hotspot."""
        mean = sum(v.load for v in instances) / len(instances)
        return max(self.hotspot_factor * mean, mean + self.hotspot_floor)

    def _steer_target(self, key: Key, pair: tuple[str, str], now_s: float) -> str | None:
        entry = self._steered.get(key)
        if entry is None:
            return None
        target, until_s = entry
        if now_s >= until_s or target not in pair:
            del self._steered[key]
            return None
        return target

    def _steer(self, key: Key, target: str, now_s: float) -> None:
        self._steered[key] = (target, now_s + self.steer_ttl_s)
        self._steered.move_to_end(key)
        if len(self._steered) > self.max_tracked:
            self._steered.popitem(last=False)

    def route(self, request: RouteRequest, instances: Sequence[InstanceView], now_s: float) -> RouteDecision:
        views = {v.name: v for v in instances}
        key = self._key(request, len(instances))
        self._remember_key(request.request_id, key)
        pair = self._rings.get([v.endpoint for v in instances]).pair(key)
        c1, c2 = views[pair[0]], views[pair[1]]
        estimate = self.estimator.estimate
        est1, est2 = estimate(request, c1), estimate(request, c2)
        e1, e2 = est1.ttft_s, est2.ttft_s
        slo = request.ttft_slo_s
        score1 = e1 + self.work_weight * (request.prompt_tokens - est1.cached_tokens) / c1.profile.prefill_tokens_per_s
        score2 = e2 + self.work_weight * (request.prompt_tokens - est2.cached_tokens) / c2.profile.prefill_tokens_per_s
        chosen, other, e_chosen, e_other = (c1, c2, e1, e2) if score1 <= score2 else (c2, c1, e2, e1)
        reason = "affinity-c1" if chosen is c1 else "affinity-c2"
        if self.follow_holder and request.prefix_hashes:
            holder_name, blocks = self.estimator.index.longest_match(request.prefix_hashes, views)
            if holder_name is not None and holder_name not in pair:
                holder = views[holder_name]
                est_h = estimate(request, holder)
                score_h = est_h.ttft_s + self.work_weight * (request.prompt_tokens - est_h.cached_tokens) / holder.profile.prefill_tokens_per_s
                if score_h < min(score1, score2):
                    chosen, other, e_chosen, e_other = holder, chosen, est_h.ttft_s, e_chosen
                    reason = "holder"
        if c1 is not c2:
            hot = self._hot_threshold(instances)
            target = self._steer_target(key, pair, now_s)
            if target is not None and views[target].load <= hot:
                if target != chosen.name:
                    chosen, other, e_chosen, e_other = other, chosen, e_other, e_chosen
                reason = "hotspot"
            elif chosen.load > hot and other.load <= hot and (slo is None or e_other <= slo):
                chosen, other, e_chosen, e_other = other, chosen, e_other, e_chosen
                self._steer(key, chosen.name, now_s)
                reason = "hotspot"
        others = [v for v in instances if v is not c1 and v is not c2]
        rest = list(zip(self.estimator.ttft_all(request, others), (v.name for v in others), others))
        if slo is not None and e1 > slo and e2 > slo and rest:
            best_s, _, best = min(rest, key=lambda item: (item[0], item[1]))
            if best_s <= slo:
                rest = [item for item in rest if item[2] is not best]
                return RouteDecision(ranked((best, chosen, other), rest), "slo-fallback", estimated_ttft_s=best_s)
        return RouteDecision(ranked((chosen, other) if other is not chosen else (chosen,), rest), reason, estimated_ttft_s=e_chosen)

    def _remember_key(self, request_id: str, key: Key) -> None:
        self._keys_of[request_id] = key
        if len(self._keys_of) > self.max_tracked:
            self._keys_of.popitem(last=False)

    # -- cancel-and-resend ------------------------------------------------------------------

    def resend(
        self, request: RouteRequest, current: Endpoint, instances: Sequence[InstanceView], now_s: float
    ) -> RouteDecision | None:
        """For a request still queued (no first token) at `current`: a decision to cancel it
        there and re-send it to its other candidate, or None to leave it. Yes only when `current`
        is a hotspot, the other candidate is not, the other's estimate beats the time left here
        by `resend_margin_ratio`, and the request was never re-sent before. The caller aborts
        it at `current` (on_finish ok=False) and dispatches it again (on_dispatch)."""
        if not self.enable_resend or request.request_id in self._resent or len(instances) < 2:
            return None
        views = {v.name: v for v in instances}
        here = views.get(current.name)
        hot = self._hot_threshold(instances)
        if here is None or here.load <= hot:
            return None
        key = self._keys_of.get(request.request_id)
        if key is None:
            key = self._key(request, len(instances))
        c1, c2 = self._rings.get([v.endpoint for v in instances]).pair(key)
        other = views[c2 if current.name == c1 else c1]
        if other.load > hot:
            return None
        stay_s = self.estimator.estimate(request, here).ttft_s
        move_s = self.estimator.estimate(request, other).ttft_s
        if move_s > stay_s * (1.0 - self.resend_margin_ratio):
            return None
        self._resent.add(request.request_id)
        self._steer(key, other.name, now_s)
        rest = sorted((v for v in instances if v is not other), key=lambda v: (v is not here, v.load, v.name))
        return RouteDecision((other.endpoint, *(v.endpoint for v in rest)), "resend")

    # -- lifecycle --------------------------------------------------------------------------

    def on_dispatch(self, request: RouteRequest, endpoint: Endpoint, now_s: float) -> None:
        self.estimator.on_dispatch(request, endpoint)

    def on_first_token(self, request: RouteRequest, endpoint: Endpoint, now_s: float) -> None:
        self.estimator.on_prefilled(request, endpoint)

    def on_finish(self, request: RouteRequest, endpoint: Endpoint, now_s: float, ok: bool) -> None:
        self.estimator.on_prefilled(request, endpoint)
        self._keys_of.pop(request.request_id, None)
