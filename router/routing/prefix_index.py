"""Which prefix blocks were recently sent to which instance: a bounded, per-instance LRU over
chained block hashes, the approximate radix tree of cache-aware routing and DualMap's estimate
of what an instance still holds in its prefix cache.

Chained hashes make the tree implicit: block i's hash names the whole prefix up to i, so a
set of hashes per instance is a radix tree whose nodes are blocks. Inserting touches a path
leaf-first, so every ancestor is at least as recent as its descendants and LRU eviction always
removes leaves first: each instance's set stays prefix-closed, and the length of the match is
found by binary search.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Collection, KeysView, Sequence


class PrefixIndex:
    """Per-instance LRU sets of prefix block hashes with a shared hash -> {instance: tick} map."""

    def __init__(self, capacity_blocks: int) -> None:
        if capacity_blocks < 1:
            raise ValueError("capacity_blocks must be >= 1")
        self.capacity_blocks = capacity_blocks
        self._per_instance: dict[str, OrderedDict[int, None]] = {}
        self._owners: dict[int, dict[str, int]] = {}
        self._tick = 0

    def size(self, instance: str) -> int:
        """Blocks currently held for `instance`."""
        blocks = self._per_instance.get(instance)
        return len(blocks) if blocks is not None else 0

    def insert(self, instance: str, hashes: Sequence[int], capacity_blocks: int | None = None) -> None:
        """Record that the prefix `hashes` was sent to `instance` (most recent use now); keep at
        most `capacity_blocks` for it (default: the index's capacity)."""
        blocks = self._per_instance.setdefault(instance, OrderedDict())
        self._tick += 1
        tick, owners = self._tick, self._owners
        for h in reversed(hashes):  # leaf first: ancestors end up more recent
            if h in blocks:
                blocks.move_to_end(h)
            else:
                blocks[h] = None
            holders = owners.get(h)
            if holders is None:
                owners[h] = {instance: tick}
            else:
                holders[instance] = tick
        limit = capacity_blocks if capacity_blocks is not None else self.capacity_blocks
        while len(blocks) > limit:
            old, _ = blocks.popitem(last=False)
            holders = owners[old]
            del holders[instance]
            if not holders:
                del owners[old]

    def holders(self, block_hash: int) -> KeysView[str]:
        """Instances holding the block `block_hash` (a read-only set view)."""
        return self._owners.get(block_hash, {}).keys()

    def matched_blocks(self, instance: str, hashes: Sequence[int]) -> int:
        """How many leading blocks of `hashes` `instance` holds (binary search: prefix-closed)."""
        blocks = self._per_instance.get(instance)
        if not blocks or not hashes or hashes[0] not in blocks:
            return 0
        lo, hi = 1, len(hashes)  # hashes[:lo] held; find the largest such lo
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if hashes[mid - 1] in blocks:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def longest_match(self, hashes: Sequence[int], among: Collection[str]) -> tuple[str | None, int]:
        """The instance of `among` holding the longest prefix of `hashes` (the most recently used
        one on a tie) and its length in blocks; (None, 0) when none holds the first block.
        `among` is best a set or a dict's keys: each step of the search is then one C-level
        `isdisjoint` over the block's holders."""
        owners = self._owners
        if not hashes:
            return None, 0
        found = owners.get(hashes[0])
        if found is None or found.keys().isdisjoint(among):
            return None, 0
        lo, hi = 1, len(hashes)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            found = owners.get(hashes[mid - 1])
            if found is not None and not found.keys().isdisjoint(among):
                lo = mid
            else:
                hi = mid - 1
        holders = owners[hashes[lo - 1]]
        return max((name for name in holders if name in among), key=lambda name: (holders[name], name)), lo

    def forget(self, instance: str) -> None:
        """Drop everything recorded for `instance` (it left the pool or restarted)."""
        for h in self._per_instance.pop(instance, ()):
            holders = self._owners[h]
            del holders[instance]
            if not holders:
                del self._owners[h]
