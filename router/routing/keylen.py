"""Adaptive affinity key length: split a hot prefix over more candidate pairs.

The policy gives each category a base key length (`RouteRequest.key_blocks`: 1-2 blocks for
system-prompt-heavy chat, more for agents). A short key keeps every request that shares a prefix
on one candidate pair, which is what makes their KV cache reusable; but when one key carries more
traffic than a pair can serve (one system prompt in front of most of a category's requests),
affinity turns into a hotspot. So, per category, we count how often each key is used (counts
decay with a half-life measured in requests) and when a key's share of the category's recent
traffic exceeds `hot_share_factor / n_instances` (more than one instance's fair share) the
request is keyed one level deeper: twice the blocks, up to `max_key_blocks`. The hot prefix then
lives on several pairs (replicating a hot prefix is cheap: it is reused by all of them), while
requests sharing the longer prefix still meet on one pair. When the key cools down, its count
decays and requests return to the base length.

Replicas count their own traffic, so two replicas may disagree on the depth of a key while it is
at the threshold; below it (the common case) the key is the base one and they agree.
"""

from __future__ import annotations

from collections import OrderedDict

from fleetgate.router.routing.base import RouteRequest
from fleetgate.router.routing.ring import Key


class AdaptiveKeyLength:
    def __init__(
        self,
        hot_share_factor: float = 1.0,
        half_life_requests: float = 512.0,
        min_count: float = 16.0,
        max_key_blocks: int = 64,
        max_keys: int = 65536,
    ) -> None:
        self.hot_share_factor = hot_share_factor
        self.min_count = min_count
        self.max_key_blocks = max_key_blocks
        self.max_keys = max_keys
        self._decay = 0.5 ** (1.0 / half_life_requests)
        self._counts: OrderedDict[tuple[str, int], tuple[float, int]] = OrderedDict()  # (category, key) -> (count, tick)
        self._ticks: dict[str, int] = {}  # requests seen per category
        self.deepened = 0  # deepening steps taken (a metric: how often hot prefixes were split)

    def key_blocks(self, request: RouteRequest, n_instances: int) -> int:
        """The key length, in prefix blocks, for `request` in a pool of `n_instances`."""
        hashes = request.prefix_hashes
        depth = min(len(hashes), max(1, request.key_blocks))
        if depth == 0 or n_instances < 3:
            return depth
        tick = self._ticks.get(request.category, 0) + 1
        self._ticks[request.category] = tick
        # Total decayed traffic of the category: a geometric series of one request per tick.
        total = (1.0 - self._decay**tick) / (1.0 - self._decay)
        threshold = total * self.hot_share_factor / n_instances
        if threshold < self.min_count:
            threshold = self.min_count
        counts, decay = self._counts, self._decay
        while True:  # count this use of the key at `depth` (LRU order: the oldest keys are dropped)
            slot = (request.category, hashes[depth - 1])
            count, last = counts.pop(slot, (0.0, tick))
            count = count * decay ** (tick - last) + 1.0
            counts[slot] = (count, tick)
            if len(counts) > self.max_keys:
                counts.popitem(last=False)
            deeper = depth * 2
            if deeper > len(hashes):
                deeper = len(hashes)
            if deeper > self.max_key_blocks:
                deeper = self.max_key_blocks
            if count <= threshold or deeper == depth:
                break
            depth = deeper
            self.deepened += 1
        return depth

    def key(self, request: RouteRequest, n_instances: int) -> Key:
        if not request.prefix_hashes:
            return request.request_id
        return request.prefix_hashes[self.key_blocks(request, n_instances) - 1]
