"""Per-instance TTFT estimate for DualMap: queue delay plus the prefill this request would add.

    ttft = steps * step_s + work_tokens / prefill_tokens_per_s
    work_tokens = queued uncached prompt tokens ahead of us + our own uncached tokens
    steps = ceil(work_tokens / (max_num_batched_tokens - running)),
    step_s = the instance's step time with its running batch decoding alongside (chunked prefill)

Queued tokens ahead of us come from this replica's own bookkeeping (what it sent there that has
no first token yet, already discounted by the prefix it expected to be cached) scaled onto the
view's `local_queued_prefill_tokens`, plus, for requests vLLM reports waiting that this replica
did not send (other gateway replicas), the mean uncached size of a request. The expected cached
prefix is how many leading prefix blocks this replica recently sent to that instance
(`PrefixIndex`, bounded by the instance's KV cache size, LRU): a replica cannot see the cache,
but it knows what it put there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from fleetgate.core.prefix import ROUTING_BLOCK_CHARS
from fleetgate.core.tokens import CHARS_PER_TOKEN
from fleetgate.pools.model import Endpoint
from fleetgate.router.routing.base import InstanceView, RouteRequest
from fleetgate.router.routing.prefix_index import PrefixIndex

BLOCK_TOKENS = ROUTING_BLOCK_CHARS // CHARS_PER_TOKEN


@dataclass(frozen=True, slots=True)
class Estimate:
    ttft_s: float
    cached_tokens: int  # prompt tokens expected to be served from the instance's prefix cache


class _Queue:
    """What this replica sent to one instance that has not produced its first token yet."""

    __slots__ = ("uncached", "raw_tokens", "uncached_tokens")

    def __init__(self) -> None:
        self.uncached: dict[str, tuple[int, int]] = {}  # request id -> (prompt tokens, uncached tokens)
        self.raw_tokens = 0
        self.uncached_tokens = 0

    def add(self, request_id: str, raw: int, uncached: int) -> None:
        self.remove(request_id)
        self.uncached[request_id] = (raw, uncached)
        self.raw_tokens += raw
        self.uncached_tokens += uncached

    def remove(self, request_id: str) -> None:
        entry = self.uncached.pop(request_id, None)
        if entry is not None:
            self.raw_tokens -= entry[0]
            self.uncached_tokens -= entry[1]


class TtftEstimator:
    """TTFT estimates per (request, instance), fed by the router's dispatch / first-token hooks."""

    def __init__(self, cache_fill_ratio: float = 1.0, mean_alpha: float = 0.05) -> None:
        # cache_fill_ratio: share of an instance's KV cache we assume still holds recent prefixes.
        self.cache_fill_ratio = cache_fill_ratio
        self.mean_alpha = mean_alpha
        self.index = PrefixIndex(capacity_blocks=1)  # per-instance capacity passed on insert
        self._queues: dict[str, _Queue] = {}
        self.mean_uncached_tokens = 0.0

    def cached_tokens(self, request: RouteRequest, instance: str) -> int:
        """Prompt tokens we expect `instance` to have cached (at least one token is computed)."""
        blocks = self.index.matched_blocks(instance, request.prefix_hashes)
        return min(blocks * BLOCK_TOKENS, max(0, request.prompt_tokens - 1))

    def estimate(self, request: RouteRequest, view: InstanceView) -> Estimate:
        cached = self.cached_tokens(request, view.name)
        return Estimate(self._ttft_s(view, request.prompt_tokens - cached), cached)

    def ttft_all(self, request: RouteRequest, views: Sequence[InstanceView]) -> list[float]:
        """Estimated TTFT on each of `views`; cheap for many views, since only instances holding
        the prompt's first block can have any of it cached."""
        hashes, prompt = request.prefix_hashes, request.prompt_tokens
        holders = self.index.holders(hashes[0]) if hashes else ()
        return [
            self._ttft_s(v, prompt - self.cached_tokens(request, v.endpoint.name) if v.endpoint.name in holders else prompt)
            for v in views
        ]

    def _ttft_s(self, view: InstanceView, own_tokens: int) -> float:
        """Prefill time of the uncached work queued on `view` (see the module docstring) plus ours."""
        queue = self._queues.get(view.endpoint.name)
        if queue is None or not queue.raw_tokens:
            own_ratio, own_queued = 1.0, 0
        else:
            own_ratio, own_queued = queue.uncached_tokens / queue.raw_tokens, len(queue.uncached)
        others = view.waiting - own_queued
        work = view.local_queued_prefill_tokens * own_ratio + own_tokens
        if others > 0:
            work += others * self.mean_uncached_tokens
        running = view.local_inflight - own_queued
        return self.prefill_time_s(view, view.running if view.running > running else running, work)

    @staticmethod
    def prefill_time_s(view: InstanceView, running: int, work_tokens: float) -> float:
        """Time for `view` to prefill `work_tokens` while its `running` batch decodes alongside."""
        p = view.profile
        running = min(running, p.max_num_seqs)
        step_s = p.step_time_s(0, running, int(view.kv_usage_ratio * p.kv_cache_tokens))
        per_step_tokens = max(1, p.max_num_batched_tokens - running)
        steps = -(-int(work_tokens) // per_step_tokens) if work_tokens > 0 else 0
        return steps * step_s + work_tokens / p.prefill_tokens_per_s

    def on_dispatch(self, request: RouteRequest, endpoint: Endpoint) -> None:
        cached = self.cached_tokens(request, endpoint.name)
        uncached = request.prompt_tokens - cached
        self._queues.setdefault(endpoint.name, _Queue()).add(request.request_id, request.prompt_tokens, uncached)
        self.mean_uncached_tokens += self.mean_alpha * (uncached - self.mean_uncached_tokens)
        capacity = int(endpoint.profile.kv_cache_tokens * self.cache_fill_ratio) // BLOCK_TOKENS
        self.index.insert(endpoint.name, request.prefix_hashes, max(1, capacity))

    def on_prefilled(self, request: RouteRequest, endpoint: Endpoint) -> None:
        """The request left the prefill queue (first token, finish, abort or cancel)."""
        queue = self._queues.get(endpoint.name)
        if queue is not None:
            queue.remove(request.request_id)

    def forget(self, instance: str) -> None:
        self.index.forget(instance)
        self._queues.pop(instance, None)
