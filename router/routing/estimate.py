"""Per-instance TTFT estimate for DualMap: queue delay plus the prefill this request would add.

    ttft = steps * step_s + work_tokens / prefill_tokens_per_s
    work_tokens = queued uncached prompt tokens ahead of us + our own uncached tokens
    steps = ceil(work_tokens / (max_num_batched_tokens - running)),
    step_s = the instance's step time with its running batch decoding alongside (chunked prefill)

Queued tokens ahead of us come from this replica's own bookkeeping (what it sent there that has
no first token yet, already discounted by the prefix it expected to be cached) scaled onto the
view's `local_queued_prefill_tokens`, plus, for requests vLLM reports waiting that this replica
did not send (other gateway replicas), the mean uncached size of a request. The expected cached
prefix is, in precise mode (the instance publishes KV events: `InstanceView.kv` is live), how
many leading KV blocks of the prompt the instance really holds, which counts what every replica
sent; otherwise (approximate mode) how many leading prefix blocks this replica recently sent there
(`PrefixIndex`, bounded by the instance's KV cache size, LRU): it knows what it put there.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Sequence

from fleetgate.core.prefix import ROUTING_BLOCK_CHARS
from fleetgate.core.tokens import CHARS_PER_TOKEN
from fleetgate.pools.model import Endpoint
from fleetgate.router.routing.base import InstanceView, KvView, RouteRequest
from fleetgate.router.routing.calibrate import TtftCalibration
from fleetgate.router.routing.prefix_index import PrefixIndex

BLOCK_TOKENS = ROUTING_BLOCK_CHARS // CHARS_PER_TOKEN
EXPECTED_TRACKED = 4096
"""Estimates remembered until their first token: the gateway routes with every candidate pool's
router but dispatches with one, so some are never resolved and age out."""
QUEUE_HISTORY = 256
"""Queue-length changes remembered per instance: enough to look back one scrape interval."""


@dataclass(frozen=True, slots=True)
class Estimate:
    ttft_s: float
    cached_tokens: int  # prompt tokens expected to be served from the instance's prefix cache


class _Queue:
    """What this replica sent to one instance that has not produced its first token yet."""

    __slots__ = ("uncached", "raw_tokens", "uncached_tokens", "history", "prompts")

    def __init__(self) -> None:
        self.uncached: dict[str, tuple[int, int]] = {}  # request id -> (prompt tokens, uncached tokens)
        self.raw_tokens = 0
        self.uncached_tokens = 0
        self.history: deque[tuple[float, int]] = deque(maxlen=QUEUE_HISTORY)  # (time, queued count) after each change
        self.prompts: dict[str, tuple[int, ...]] = {}  # request id -> its prefix hashes

    def add(self, request_id: str, raw: int, uncached: int, now_s: float, prefix_hashes: tuple[int, ...]) -> None:
        self.remove(request_id, now_s)
        self.uncached[request_id] = (raw, uncached)
        self.prompts[request_id] = prefix_hashes
        self.raw_tokens += raw
        self.uncached_tokens += uncached
        self.history.append((now_s, len(self.uncached)))

    def remove(self, request_id: str, now_s: float) -> None:
        entry = self.uncached.pop(request_id, None)
        self.prompts.pop(request_id, None)
        if entry is not None:
            self.raw_tokens -= entry[0]
            self.uncached_tokens -= entry[1]
            self.history.append((now_s, len(self.uncached)))

    def pending_match(self, hashes: tuple[int, ...]) -> int:
        """Leading blocks of `hashes` shared with a prompt queued here: it will be cached by the
        time ours is prefilled, though the instance's KV events cannot show it yet."""
        best = 0
        for other in self.prompts.values():
            if other and hashes and other[0] == hashes[0]:
                lo, hi = 1, min(len(other), len(hashes))  # chained hashes: equal at i means equal up to i
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if other[mid - 1] == hashes[mid - 1]:
                        lo = mid
                    else:
                        hi = mid - 1
                best = max(best, lo)
        return best

    def queued_at(self, time_s: float) -> int:
        """How many of our requests were queued here at `time_s` (a recent past: the last scrape)."""
        for changed_s, count in reversed(self.history):
            if changed_s <= time_s:
                return count
        return 0 if len(self.history) < QUEUE_HISTORY else len(self.uncached)


class TtftEstimator:
    """TTFT estimates per (request, instance), fed by the router's dispatch / first-token hooks."""

    def __init__(self, cache_fill_ratio: float = 1.0, mean_alpha: float = 0.05, calibrate: bool = False) -> None:
        # cache_fill_ratio: share of an instance's KV cache we assume still holds recent prefixes.
        self.cache_fill_ratio = cache_fill_ratio
        self.mean_alpha = mean_alpha
        self.index = PrefixIndex(capacity_blocks=1)  # per-instance capacity passed on insert
        self._queues: dict[str, _Queue] = {}
        self.mean_uncached_tokens = 0.0
        self._kv: dict[str, KvView] = {}  # instance -> its KV-event view, as last seen in a decision
        # Off by default: on an emulated fleet whose profiles are exact it cost 10 points of SLO
        # attainment at overload (observed TTFTs then include KV-full waits the model lacks), and
        # it pays where profiles are wrong (p50 error 247 -> 36 ms on engines 2.5x slower).
        self.calibration = TtftCalibration() if calibrate else None
        # request id -> (instance, queue_s, prefill_s, dispatched at): what was estimated, for calibration
        self._expected: OrderedDict[str, tuple[str, float, float, float | None]] = OrderedDict()

    def cached_tokens(self, request: RouteRequest, view: InstanceView) -> int:
        """Prompt tokens we expect `view` to have cached (at least one token is computed)."""
        kv = view.kv
        if kv is not None:
            self._kv[view.endpoint.name] = kv
        return self._cached(request, view.endpoint.name, kv)

    def _cached(self, request: RouteRequest, instance: str, kv: KvView | None) -> int:
        if kv is not None and request.kv_hashes and kv.live:
            tokens = kv.matched_blocks(request.kv_hashes) * kv.block_tokens
            queue = self._queues.get(instance)
            if queue is not None and queue.prompts:
                tokens = max(tokens, queue.pending_match(request.prefix_hashes) * BLOCK_TOKENS)
        else:
            tokens = self.index.matched_blocks(instance, request.prefix_hashes) * BLOCK_TOKENS
        limit = request.prompt_tokens - 1
        return tokens if tokens <= limit else limit if limit > 0 else 0

    def precise(self, request: RouteRequest, view: InstanceView) -> bool:
        """Whether `view`'s cached prefix for `request` comes from its KV events."""
        return view.kv is not None and bool(request.kv_hashes) and view.kv.live

    def estimate(self, request: RouteRequest, view: InstanceView) -> Estimate:
        return Estimate(*self.ttft_and_cached(request, view))

    def ttft_and_cached(self, request: RouteRequest, view: InstanceView) -> tuple[float, int]:
        """`estimate` as a plain (ttft_s, cached_tokens) tuple: DualMap makes up to 11 estimates
        per decision, and building a frozen dataclass costs as much as a third of one."""
        name = view.endpoint.name
        kv = view.kv
        if kv is not None:
            self._kv[name] = kv
        cached = self._cached(request, name, kv)
        queue_s, prefill_s = self._terms(view, request.prompt_tokens - cached)
        if self.calibration is None:
            return queue_s + prefill_s, cached
        step_scale, prefill_scale = self.calibration.scales(name)
        return step_scale * queue_s + prefill_scale * prefill_s, cached

    def _terms(self, view: InstanceView, own_tokens: int) -> tuple[float, float]:
        """The profile's (steps x step time, tokens / prefill rate) for the uncached work queued
        on `view` (see the module docstring) plus ours, while its running batch decodes alongside."""
        queue = self._queues.get(view.endpoint.name)
        if queue is None or not queue.raw_tokens:
            own_ratio, own_queued = 1.0, 0
        else:
            own_ratio, own_queued = queue.uncached_tokens / queue.raw_tokens, len(queue.uncached)
        # Requests vLLM reported waiting at the scrape that were not ours then: other replicas'.
        # Our own count is taken at the scrape's time, not now: the scrape is up to an interval
        # old, and ours that got their first token since would otherwise be counted twice.
        own_then = queue.queued_at(view.scraped_at_s) if queue is not None and view.scraped_at_s is not None else own_queued
        others = view.waiting - own_then
        work = view.local_queued_prefill_tokens * own_ratio + own_tokens
        if others > 0:
            work += others * self.mean_uncached_tokens
        running = view.local_inflight - own_queued
        if view.running > running:
            running = view.running
        p = view.profile
        if running > p.max_num_seqs:
            running = p.max_num_seqs
        step_s = p.step_time_s(0, running, int(view.kv_usage_ratio * p.kv_cache_tokens))
        per_step_tokens = p.max_num_batched_tokens - running
        steps = -(-int(work) // (per_step_tokens if per_step_tokens > 1 else 1)) if work > 0 else 0
        return steps * step_s, work / p.prefill_tokens_per_s

    def prefill_scale(self, instance: str) -> float:
        """How much slower than its profile `instance` was seen to prefill (1: as profiled)."""
        return 1.0 if self.calibration is None else self.calibration.scales(instance)[1]

    # -- calibration (calibrate.py): what was estimated for the chosen instance vs what happened --

    def expect(self, request: RouteRequest, view: InstanceView) -> None:
        """Remember the estimate's terms for `request` on `view`, the instance it was routed to."""
        if self.calibration is None:
            return
        queue_s, prefill_s = self._terms(view, request.prompt_tokens - self.cached_tokens(request, view))
        self._expected[request.request_id] = (view.endpoint.name, queue_s, prefill_s, None)
        if len(self._expected) > EXPECTED_TRACKED:
            self._expected.popitem(last=False)

    def _dispatched(self, request: RouteRequest, endpoint: Endpoint, now_s: float) -> None:
        expected = self._expected.get(request.request_id)
        if expected is not None and expected[0] == endpoint.name and expected[3] is None:
            self._expected[request.request_id] = (*expected[:3], now_s)

    def on_first_token(self, request: RouteRequest, endpoint: Endpoint, now_s: float) -> None:
        """Learn from a streamed request's TTFT on the instance it was estimated for (a fallback
        or a non-streamed answer is not what was estimated)."""
        self.on_prefilled(request, endpoint, now_s)
        expected = self._expected.pop(request.request_id, None)
        if expected is not None and self.calibration is not None and request.stream and expected[0] == endpoint.name and expected[3] is not None:
            self.calibration.observe(endpoint.name, expected[1], expected[2], now_s - expected[3])

    def on_finish(self, request: RouteRequest, endpoint: Endpoint, now_s: float) -> None:
        self.on_prefilled(request, endpoint, now_s)
        self._expected.pop(request.request_id, None)

    def on_dispatch(self, request: RouteRequest, endpoint: Endpoint, now_s: float) -> None:
        cached = self._cached(request, endpoint.name, self._kv.get(endpoint.name))
        uncached = request.prompt_tokens - cached
        self._queues.setdefault(endpoint.name, _Queue()).add(request.request_id, request.prompt_tokens, uncached, now_s, request.prefix_hashes)
        self._dispatched(request, endpoint, now_s)
        self.mean_uncached_tokens += self.mean_alpha * (uncached - self.mean_uncached_tokens)
        capacity = int(endpoint.profile.kv_cache_tokens * self.cache_fill_ratio) // BLOCK_TOKENS
        self.index.insert(endpoint.name, request.prefix_hashes, max(1, capacity))

    def on_prefilled(self, request: RouteRequest, endpoint: Endpoint, now_s: float) -> None:
        """The request left the prefill queue (first token, finish, abort or cancel)."""
        queue = self._queues.get(endpoint.name)
        if queue is not None:
            queue.remove(request.request_id, now_s)

    def forget(self, instance: str) -> None:
        self.index.forget(instance)
        self._queues.pop(instance, None)
        self._kv.pop(instance, None)
        if self.calibration is not None:
            self.calibration.forget(instance)
