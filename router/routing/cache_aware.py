"""The `cache_aware` policy of sglang-router 0.3.2 (vllm-router 0.1.17 forks it), rule for rule,
over 256-char prefix blocks instead of a character radix tree.

Per request (sglang-router `src/policies/cache_aware.rs` `select_worker`, lines 351-473):
1. Load is the router's own in-flight counter per worker: +1 when the worker is chosen, -1 when
   the response body is finished or dropped (`core/worker.rs` `WorkerLoadGuard`). Here that is
   `InstanceView.local_inflight`; scraped engine counts are never read.
2. Imbalanced (max - min > `balance_abs_threshold` AND max > `balance_rel_threshold` * min):
   the least loaded worker, first in pool order on a tie (Rust `min_by_key`); reason `imbalanced`.
3. Else the longest prefix match over the tree; match rate = matched / prompt length. Above
   `cache_threshold`: the worker holding it (reason `cache-match`); on a tie between holders of
   the same deepest prefix, the one that put it in the tree first (the node's `last_tenant` is
   its creator and is never updated by later inserts, `tree.rs`). At or below the threshold:
   the least loaded worker, first on a tie (reason `min-load`; older SGLang versions went to the
   smallest tree instead, 0.3.2 does not).
4. The prompt is inserted into the chosen worker's tree on every path.
Defaults are the command-line defaults of `sglang-router launch` 0.3.2 (`router_args.py`):
threshold 0.3, balance 64 / 1.5, tree bounded at 2**26 characters per worker, evicted leaf-first
by LRU (every 60 s there; on insert here; neither binds on any trace we run).

The block approximation: matches count whole 256-char blocks (a character tree also counts the
partial block), so the match rate is low by < 256 / prompt chars: under 1 point on Mooncake's
prompts, and it only matters within that distance of the threshold. The tree is over our
canonical rendering (roles marked) where SGLang joins message contents with spaces; both keep a
shared conversation prefix a shared text prefix.
"""

from __future__ import annotations

from typing import Sequence

from fleetgate.core.prefix import ROUTING_BLOCK_CHARS
from fleetgate.pools.model import Endpoint
from fleetgate.router.routing.base import InstanceView, RouteDecision, RouteRequest
from fleetgate.router.routing.baselines import least_inflight
from fleetgate.router.routing.common import NoHooks, decide
from fleetgate.router.routing.prefix_index import PrefixIndex

SGLANG_MAX_TREE_CHARS = 2**26
"""sglang-router 0.3.2's `--max-tree-size` default (characters per worker; vllm-router: 2**25)."""


class CacheAware(NoHooks):
    name = "cache-aware"

    def __init__(
        self,
        cache_threshold: float = 0.3,
        balance_abs_threshold: int = 64,
        balance_rel_threshold: float = 1.5,
        max_tree_chars: int = SGLANG_MAX_TREE_CHARS,
    ) -> None:
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self.tree = PrefixIndex(max(1, max_tree_chars // ROUTING_BLOCK_CHARS))

    def route(self, request: RouteRequest, instances: Sequence[InstanceView], now_s: float) -> RouteDecision:
        loads = [v.local_inflight for v in instances]
        high, low = max(loads), min(loads)
        if high - low > self.balance_abs_threshold and high > self.balance_rel_threshold * low:
            return decide(least_inflight(instances), instances, "imbalanced")
        hashes = request.prefix_hashes
        holder, matched = self.first_holder_of_longest_match(hashes, instances)
        if holder is not None and matched / len(hashes) > self.cache_threshold:
            return decide(holder, instances, "cache-match")
        return decide(least_inflight(instances), instances, "min-load")

    def first_holder_of_longest_match(
        self, hashes: Sequence[int], instances: Sequence[InstanceView]
    ) -> tuple[InstanceView | None, int]:
        """The instance holding the longest prefix of `hashes` and its length in blocks; among
        equal holders the one that inserted that block first (SGLang's node creator)."""
        by_name = {v.name: v for v in instances}

        def first_holder(depth: int) -> InstanceView | None:
            # holders() iterates in first-insertion order: a later insert updates, never reorders
            return next((by_name[n] for n in self.tree.holders(hashes[depth - 1]) if n in by_name), None)

        if not hashes or first_holder(1) is None:
            return None, 0
        lo, hi = 1, len(hashes)  # prefix-closed per instance, so holding depth d implies d - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if first_holder(mid) is not None:
                lo = mid
            else:
                hi = mid - 1
        return first_holder(lo), lo

    def on_dispatch(self, request: RouteRequest, endpoint: Endpoint, now_s: float) -> None:
        self.tree.insert(endpoint.name, request.prefix_hashes)
