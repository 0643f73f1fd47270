"""DualMap v2: two hash-chosen candidates per prefix key; the prefix stays where it is cached.

Per request (DESIGN.md, "Prefix affinity: our DualMap design", and docs/routing.md):
1. Key: the prefix chain hash at `key_blocks` blocks (adaptive per category, keylen.py), or the
   session id when `use_session_key` and the request has one.
2. Candidates: (c1, c2) from two consistent-hash rings with independent seeds (ring.py), so every
   replica derives the same pair with no shared state and a scale event moves ~2/N of keys; plus
   (`follow_holder`) the instance outside the pair holding a longer cached prefix, if any.
   What an instance holds comes from its KV events where it publishes them (precise mode: every
   replica sees what all replicas sent), else from what this replica sent there (estimate.py).
3. Rule 1, held prefixes (decided here, v2): when some option holds at least `affinity_ratio`
   of the prompt, the request goes to the one holding most, whatever its queue, and is never
   moved for load (hotspot, SLO fallback). Recomputing a long prefix elsewhere costs more GPU
   time than the wait saves, and near saturation that time is everyone's queue: on Mooncake at
   8x the trace's rate this rule took SLO attainment from 0.68 to 0.78-0.84 (docs/routing.md).
   `resend()` may still move a request that waits on a hotspot without a first token.
4. Otherwise the options compete on score: estimated TTFT plus `work_weight` x the prefill time
   of the request's own uncached tokens there (the marginal cost of recomputing; ties go to c1).
5. Hotspot: an instance whose load exceeds `hotspot_factor` x the pool mean (and the mean by
   `hotspot_floor`) does not take a key if its other candidate is not hot and meets the SLO; the
   key is steered to the other candidate for `steer_ttl_s`. Reason "hotspot".
6. Placement of a prompt with nothing cached (`place_uncached`): "pair" keeps it on (c1, c2),
   so a replica that did not send it still finds it; "pool" sends it to the lowest estimate in
   the pool (reason "anywhere"), which balances far better than two choices; "auto" (default)
   is "pool" in precise mode, where every replica sees where it went, else "pair". Where a
   category shows no reuse at all (`min_reuse_ratio`), uncached requests go to the pool's lowest
   estimate in either mode (reason "no-reuse").
7. SLO fallback: when every option's estimate exceeds the request's TTFT SLO, the lowest
   estimate elsewhere, if it meets the SLO (reason "slo-fallback"); a request nobody can serve
   in time stays with its candidates.
8. Cancel-and-resend: `resend()` tells the caller whether a request still queued (no first
   token) on an instance that became a hotspot should be re-sent to its other candidate; once.
A decision is O(1) in the pool size but for two cheap passes (the ring cache's membership check,
the mean load when a candidate may be hot): a
fallback estimates at most FALLBACK_SCAN instances, and the gateway's fallback order beyond the
first two is ranked only when it needs it (`RouteDecision.tail`).
"""

from __future__ import annotations

from collections import OrderedDict
from operator import itemgetter
from typing import Sequence

from fleetgate.pools.model import Endpoint
from fleetgate.router.routing.base import InstanceView, RouteDecision, RouteRequest
from fleetgate.router.routing.common import rank_rest
from fleetgate.router.routing.estimate import BLOCK_TOKENS, TtftEstimator
from fleetgate.router.routing.keylen import AdaptiveKeyLength
from fleetgate.router.routing.ring import DualRing, Key, RingCache


FALLBACK_SCAN = 8
"""Instances a load fallback estimates: the least loaded ones (see DualMap._best_elsewhere)."""

_SCORE = itemgetter(0)

_Option = tuple[float, tuple[float, int], InstanceView, str]
"""A candidate of one decision: (score, (estimated TTFT s, cached tokens), view, reason label)."""


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
        affinity_ratio: float = 0.3,
        place_uncached: str = "auto",
        calibrate: bool = False,
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
        if place_uncached not in ("auto", "pair", "pool"):
            raise ValueError(f"place_uncached must be auto, pair or pool, not {place_uncached!r}")
        self.affinity_ratio = affinity_ratio
        self.place_uncached = place_uncached
        self.follow_holder = follow_holder
        self.min_reuse_ratio = min_reuse_ratio
        self.reuse_alpha = reuse_alpha
        self._reuse: dict[str, float] = {}  # category -> mean share of prompts found cached
        self.estimator = TtftEstimator(cache_fill_ratio=cache_fill_ratio, calibrate=calibrate)
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
        mean = sum([v.load for v in instances]) / len(instances)  # a list comprehension: cheaper than map or a generator
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

    def _option(self, request: RouteRequest, view: InstanceView, label: str) -> _Option:
        """(score, estimate, view, label): the score is the estimated TTFT plus `work_weight` x
        the prefill time our uncached tokens add there."""
        ttft_s, cached = self.estimator.ttft_and_cached(request, view)
        uncached_s = (request.prompt_tokens - cached) / view.profile.prefill_tokens_per_s
        return ttft_s + self.work_weight * uncached_s * self.estimator.prefill_scale(view.endpoint.name), (ttft_s, cached), view, label

    def _observe_reuse(self, category: str, reuse_ratio: float) -> float:
        """Running mean of the share of prompts found cached on some candidate, per category."""
        mean = self._reuse.get(category, 1.0)
        mean += self.reuse_alpha * (reuse_ratio - mean)
        self._reuse[category] = mean
        return mean

    def route(self, request: RouteRequest, instances: Sequence[InstanceView], now_s: float) -> RouteDecision:
        rings = self._rings.get([v.endpoint for v in instances])
        at = self._rings.positions  # name -> index in `instances`: no per-request dict of views
        key = self._key(request, len(instances))
        self._remember_key(request.request_id, key)
        pair = rings.pair(key)
        c1, c2 = instances[at[pair[0]]], instances[at[pair[1]]]
        ttft_s = self._ttft_s
        options = [self._option(request, c1, "affinity-c1")]
        cached = options[0][1][1]
        if c1 is not c2:
            options.append(self._option(request, c2, "affinity-c2"))
            if options[1][1][1] > cached:
                cached = options[1][1][1]
        if self.follow_holder:
            holder = self._holder(request, instances, at, cached, pair)
            if holder is not None:
                options.append(self._option(request, holder, "holder"))
                cached = options[-1][1][1]
        options.sort(key=_SCORE)  # stable: a tie keeps c1 first
        reuse = self._observe_reuse(request.category, cached / max(1, request.prompt_tokens))
        held = cached and cached >= self.affinity_ratio * request.prompt_tokens
        if held:  # rule 1: go where most of the prefix is cached (the best score among equals)
            options.sort(key=lambda option: -option[1][1])
        _, (e_chosen, _), chosen, reason = options[0]
        other = options[1][2] if len(options) > 1 else chosen
        slo = request.ttft_slo_s
        if held:  # never moved for load (below): recomputing the prefix costs more than the wait saves
            return self._decision(request, instances, (chosen, other) if other is not chosen else (chosen,), reason, e_chosen)
        target = self._steer_target(key, pair, now_s) if c1 is not c2 else None
        # Else nothing can be hot, or moving can't help: a hotspot must be busier than the other.
        if c1 is not c2 and (target is not None or chosen.load > max(other.load, self.hotspot_floor)):
            hot = self._hot_threshold(instances)
            if target is not None and instances[at[target]].load <= hot:
                if target != chosen.name:
                    chosen, other = instances[at[target]], chosen
                reason = "hotspot"
            elif chosen.load > hot and other.load <= hot and (slo is None or ttft_s(request, other) <= slo):
                chosen, other = other, chosen
                self._steer(key, chosen.name, now_s)
                reason = "hotspot"
            if reason == "hotspot":
                e_chosen = ttft_s(request, chosen)
        head = (chosen, other) if other is not chosen else (chosen,)
        anywhere = None if cached else "no-reuse" if reuse < self.min_reuse_ratio else "anywhere" if self._places_anywhere(request, c1) else None
        over_slo = slo is not None and all(option[1][0] > slo for option in options)
        if len(instances) > len(head) and (anywhere or over_slo):
            best, best_s = self._best_elsewhere(request, instances, head, rings, key, at)
            label = anywhere if anywhere and best_s < e_chosen else "slo-fallback" if over_slo and best_s <= slo else None
            if label is not None:
                return self._decision(request, instances, (best, *head), label, best_s)
        return self._decision(request, instances, head, reason, e_chosen)

    def _places_anywhere(self, request: RouteRequest, view: InstanceView) -> bool:
        """Whether a prompt with nothing cached may go to the best instance of the pool rather
        than to its pair: where every replica will see where it went (KV events), or where told."""
        return self.place_uncached == "pool" or (self.place_uncached == "auto" and self.estimator.precise(request, view))

    def _holder(self, request: RouteRequest, instances: Sequence[InstanceView], at: dict[str, int], pair_cached: int,
                pair: tuple[str, str]) -> InstanceView | None:
        """The instance outside `pair` with the longest cached prefix of the prompt, when it
        holds more than `pair_cached` tokens: from KV events where the pool publishes them (so
        what every replica sent counts), else from what this replica sent."""
        if self.estimator.precise(request, instances[at[pair[0]]]):
            best, best_tokens = None, pair_cached
            for view in instances:
                kv = view.kv
                if kv is not None and kv.live and view.name not in pair:
                    tokens = kv.matched_blocks(request.kv_hashes) * kv.block_tokens
                    if tokens > best_tokens:
                        best, best_tokens = view, tokens
            return best
        hashes = request.prefix_hashes
        if not hashes or self.estimator.index.holders(hashes[0]) <= set(pair):
            return None  # the common case, checked in O(holders): nobody outside the pair holds even the first block
        name, blocks = self.estimator.index.longest_match(hashes, at.keys())
        if name is None or name in pair or min(blocks * BLOCK_TOKENS, request.prompt_tokens - 1) <= pair_cached:
            return None
        return instances[at[name]]

    def _best_elsewhere(
        self, request: RouteRequest, instances: Sequence[InstanceView], head: tuple[InstanceView, ...],
        rings: DualRing, key: Key, at: dict[str, int],
    ) -> tuple[InstanceView, float]:
        """The lowest TTFT estimate outside `head`: over the whole pool when it is small, else
        over the next FALLBACK_SCAN instances on the key's second ring. Those are a random
        sample per key (the best of 8 random instances is near the pool's best) that every
        replica draws alike, so one key's fallbacks meet on the same few instances and reuse
        each other's prefix; and a decision stays O(1) in the pool size."""
        chosen, other = head[0], head[-1]
        if len(instances) <= FALLBACK_SCAN + len(head):
            rest = [v for v in instances if v is not chosen and v is not other]
        else:  # the first FALLBACK_SCAN + len(head) names hold FALLBACK_SCAN outside the head
            names = rings.second.first(key, FALLBACK_SCAN + len(head))
            rest = [v for v in (instances[at[name]] for name in names) if v is not chosen and v is not other]
            del rest[FALLBACK_SCAN:]
        estimate = self.estimator.ttft_and_cached
        best, best_s, best_name = None, 0.0, ""
        for view in rest:  # the lowest estimate, ties to the first name
            view_s, name = estimate(request, view)[0], view.endpoint.name
            if best is None or view_s < best_s or (view_s == best_s and name < best_name):
                best, best_s, best_name = view, view_s, name
        assert best is not None  # the caller asks only when the pool is larger than the head
        return best, best_s

    def _ttft_s(self, request: RouteRequest, view: InstanceView) -> float:
        return self.estimator.ttft_and_cached(request, view)[0]

    def _decision(
        self, request: RouteRequest, instances: Sequence[InstanceView], head: tuple[InstanceView, ...], reason: str, estimate_s: float
    ) -> RouteDecision:
        """`head` first; the other instances by TTFT estimate, ranked only if the gateway needs them."""
        self.estimator.expect(request, head[0])
        endpoints = tuple([v.endpoint for v in head])
        return RouteDecision(
            endpoints, reason, estimated_ttft_s=estimate_s,
            tail=lambda: rank_rest(instances, endpoints, lambda v: self._ttft_s(request, v)),
        )

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
        self.estimator.on_dispatch(request, endpoint, now_s)

    def on_first_token(self, request: RouteRequest, endpoint: Endpoint, now_s: float) -> None:
        self.estimator.on_first_token(request, endpoint, now_s)

    def on_finish(self, request: RouteRequest, endpoint: Endpoint, now_s: float, ok: bool) -> None:
        self.estimator.on_finish(request, endpoint, now_s)
        self._keys_of.pop(request.request_id, None)
