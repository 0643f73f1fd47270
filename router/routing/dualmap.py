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
5. SLO fallback: when every option's estimate exceeds the request's TTFT SLO, affinity is
   dropped for this request: the instance with the lowest estimate in the pool (reason
   "slo-fallback"). The estimate still counts each instance's expected cached prefix. Decided
   here: only when that instance is expected to meet the SLO; a request no instance can serve in
   time (a long uncached prompt) stays with its candidates, because moving it would not save its
   SLO but would write its prefix where its key's later requests will not look (measured on
   Mooncake: +2-3 points of prefix hit ratio at high load).
   Decided here (`min_reuse_ratio`): per category we keep a running mean of how much of each
   prompt some option already holds. Where it stays under 2% (lengths-only traces, one-shot
   prompts) affinity buys nothing, and two hashed choices balance worse than one over the whole
   pool, so an uncached request goes to the instance with the lowest estimate (reason
   "no-reuse"). The mean starts at 1 (affinity assumed useful until shown otherwise).
6. Cancel-and-resend: `resend()` tells the caller whether a request still queued (no first token)
   on an instance that became a hotspot should be cancelled and re-sent to its other candidate;
   at most once per request (a bounded set of re-sent ids).
`ordered` is the chosen instance, then the other candidate, then the rest by estimate (the
best RANKED_FALLBACKS ranked, the tail in pool order: see common.py).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

from fleetgate.pools.model import Endpoint
from fleetgate.router.routing.base import InstanceView, RouteDecision, RouteRequest
from fleetgate.router.routing.common import ranked
from fleetgate.router.routing.estimate import Estimate, TtftEstimator
from fleetgate.router.routing.keylen import AdaptiveKeyLength
from fleetgate.router.routing.ring import Key, RingCache


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
        min_reuse_ratio: float = 0.02,
        reuse_alpha: float = 0.02,
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
        self.min_reuse_ratio = min_reuse_ratio
        self.reuse_alpha = reuse_alpha
        self._reuse: dict[str, float] = {}  # category -> mean share of prompts found cached
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

    def _score(self, request: RouteRequest, view: InstanceView, est: Estimate) -> float:
        """Estimated TTFT plus `work_weight` x the prefill time our uncached tokens add there."""
        return est.ttft_s + self.work_weight * (request.prompt_tokens - est.cached_tokens) / view.profile.prefill_tokens_per_s

    def _observe_reuse(self, category: str, reuse_ratio: float) -> float:
        """Running mean of the share of prompts found cached on some candidate, per category."""
        mean = self._reuse.get(category, 1.0)
        mean += self.reuse_alpha * (reuse_ratio - mean)
        self._reuse[category] = mean
        return mean

    def route(self, request: RouteRequest, instances: Sequence[InstanceView], now_s: float) -> RouteDecision:
        views = {v.name: v for v in instances}
        key = self._key(request, len(instances))
        self._remember_key(request.request_id, key)
        pair = self._rings.get([v.endpoint for v in instances]).pair(key)
        c1, c2 = views[pair[0]], views[pair[1]]
        estimate = self.estimator.estimate
        options = [(self._score(request, v, est), est, v, label) for v, label in ((c1, "affinity-c1"), (c2, "affinity-c2")) for est in (estimate(request, v),)]
        if c1 is c2:
            options.pop()
        if self.follow_holder and request.prefix_hashes:
            holder, _ = self.estimator.index.longest_match(request.prefix_hashes, views)
            if holder is not None and holder not in pair:
                est = estimate(request, views[holder])
                options.append((self._score(request, views[holder], est), est, views[holder], "holder"))
        options.sort(key=lambda option: option[0])  # stable: a tie keeps c1 first
        _, est_chosen, chosen, reason = options[0]
        other = options[1][2] if len(options) > 1 else chosen
        e_chosen = est_chosen.ttft_s
        slo = request.ttft_slo_s
        cached = max(option[1].cached_tokens for option in options)
        reuse = self._observe_reuse(request.category, cached / max(1, request.prompt_tokens))
        if c1 is not c2:
            hot = self._hot_threshold(instances)
            target = self._steer_target(key, pair, now_s)
            if target is not None and views[target].load <= hot:
                if target != chosen.name:
                    chosen, other = views[target], chosen
                reason = "hotspot"
            elif chosen.load > hot and other.load <= hot and (slo is None or estimate(request, other).ttft_s <= slo):
                chosen, other = other, chosen
                self._steer(key, chosen.name, now_s)
                reason = "hotspot"
            if reason == "hotspot":
                e_chosen = estimate(request, chosen).ttft_s
        others = [v for v in instances if v is not chosen and v is not other]
        rest = list(zip(self.estimator.ttft_all(request, others), (v.name for v in others), others))
        no_reuse = reuse < self.min_reuse_ratio and cached == 0
        over_slo = slo is not None and all(option[1].ttft_s > slo for option in options)
        if rest and (no_reuse or over_slo):
            best_s, _, best = min(rest, key=lambda item: (item[0], item[1]))
            label = "no-reuse" if no_reuse and best_s < e_chosen else "slo-fallback" if over_slo and best_s <= slo else None
            if label is not None:
                rest = [item for item in rest if item[2] is not best]
                return RouteDecision(ranked((best, chosen, other), rest), label, estimated_ttft_s=best_s)
        ordered = (chosen, other) if other is not chosen else (chosen,)
        return RouteDecision(ranked(ordered, rest), reason, estimated_ttft_s=e_chosen)

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
