"""The SGLang / vLLM-router `cache_aware` policy, over prefix block hashes instead of raw text.

Per request: if the pool is imbalanced (max_load - min_load > balance_abs_threshold AND
max_load > balance_rel_threshold * min_load) route to the least loaded instance; otherwise find
the instance whose approximate tree holds the longest prefix of the prompt, and go there if the
match covers more than `cache_threshold` of the prompt, else to the instance with the smallest
tree (the most free cache). Whatever was chosen gets the prompt inserted into its tree. The tree
is `PrefixIndex` with per-instance LRU eviction by size, as SGLang's periodic eviction bounds it
(default 2**24 characters, 4 Mi tokens: SGLang's own default, far larger than an H100's KV cache,
which is exactly the approximation this baseline stands for).
"""

from __future__ import annotations

from typing import Sequence

from fleetgate.core.prefix import ROUTING_BLOCK_CHARS
from fleetgate.pools.model import Endpoint
from fleetgate.router.routing.base import InstanceView, RouteDecision, RouteRequest
from fleetgate.router.routing.common import NoHooks, decide, load_order
from fleetgate.router.routing.prefix_index import PrefixIndex

SGLANG_MAX_TREE_CHARS = 2**24


class CacheAware(NoHooks):
    name = "cache-aware"

    def __init__(
        self,
        cache_threshold: float = 0.5,
        balance_abs_threshold: int = 64,
        balance_rel_threshold: float = 1.5,
        max_tree_chars: int = SGLANG_MAX_TREE_CHARS,
    ) -> None:
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self.tree = PrefixIndex(max(1, max_tree_chars // ROUTING_BLOCK_CHARS))

    def route(self, request: RouteRequest, instances: Sequence[InstanceView], now_s: float) -> RouteDecision:
        loads = [v.load for v in instances]
        high, low = max(loads), min(loads)
        if high - low > self.balance_abs_threshold and high > self.balance_rel_threshold * low:
            return decide(min(instances, key=load_order), instances, "imbalanced")
        hashes = request.prefix_hashes
        best, matched = self.tree.longest_match(hashes, (v.name for v in instances))
        if best is not None and matched / len(hashes) > self.cache_threshold:
            chosen = next(v for v in instances if v.name == best)
            return decide(chosen, instances, "cache-match")
        smallest = min(instances, key=lambda v: (self.tree.size(v.name), v.name))
        return decide(smallest, instances, "smallest-tree")

    def on_dispatch(self, request: RouteRequest, endpoint: Endpoint, now_s: float) -> None:
        self.tree.insert(endpoint.name, request.prefix_hashes)
