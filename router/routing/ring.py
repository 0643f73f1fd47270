"""Consistent-hash rings with weighted virtual nodes, and the two-ring candidate pair of DualMap.

A ring places `vnodes_per_weight * weight` points per instance on a 64-bit circle (xxh3 of
"name#i" under the ring's seed); a key (a prefix chain hash or a session id) hashed under the
same seed lands on the circle and belongs to the next point clockwise. Everything is a pure
function of (membership, weights, seed), so every gateway replica computes the same owners with
no shared state, and adding or removing one instance moves only the keys it gains or loses
(about 1/N per ring).

Rings are rebuilt only when membership or weights change (`RingCache`), since building 512
instances x 256 points costs ~100 ms while a lookup is one bisect.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import OrderedDict
from itertools import islice
from typing import Iterator, Sequence

import xxhash

from fleetgate.pools.model import Endpoint

DEFAULT_VNODES_PER_WEIGHT = 256
"""Points per unit of weight: the owner share of an instance deviates ~1/sqrt(256) = 6% from fair."""

Key = int | str


def key_position(key: Key, seed: int) -> int:
    """Where `key` lands on the ring seeded with `seed` (64-bit)."""
    data = key.encode() if isinstance(key, str) else (key & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little")
    return xxhash.xxh3_64_intdigest(data, seed=seed)


Membership = tuple[tuple[str, float], ...]


def membership_of(endpoints: Sequence[Endpoint]) -> Membership:
    """The (name, weight) pairs that determine a ring layout, in a canonical order."""
    return tuple(sorted((e.name, e.weight) for e in endpoints))


class HashRing:
    """One consistent-hash ring over named instances (see the module docstring)."""

    __slots__ = ("seed", "names", "_points", "_owners")

    def __init__(self, membership: Membership, seed: int, vnodes_per_weight: int = DEFAULT_VNODES_PER_WEIGHT) -> None:
        if not membership:
            raise ValueError("a hash ring needs at least one instance")
        self.seed = seed
        self.names: tuple[str, ...] = tuple(name for name, _ in membership)
        points: list[tuple[int, int]] = []
        for index, (name, weight) in enumerate(membership):
            for i in range(max(1, round(vnodes_per_weight * weight))):
                points.append((xxhash.xxh3_64_intdigest(f"{name}#{i}".encode(), seed=seed), index))
        points.sort()
        self._points = [p for p, _ in points]
        self._owners = [o for _, o in points]

    def _start(self, key: Key) -> int:
        i = bisect_left(self._points, key_position(key, self.seed))
        return 0 if i == len(self._points) else i

    def lookup(self, key: Key) -> str:
        """The instance owning `key`."""
        return self.names[self._owners[self._start(key)]]

    def walk(self, key: Key) -> Iterator[str]:
        """Distinct instances in ring order from `key` (lazily: most callers stop at the first)."""
        owners, names, total = self._owners, self.names, len(self._owners)
        seen: set[int] = set()
        i = self._start(key)
        for _ in range(total):
            owner = owners[i]
            if owner not in seen:
                seen.add(owner)
                yield names[owner]
                if len(seen) == len(names):
                    return
            i = i + 1 if i + 1 < total else 0

    def candidates(self, key: Key, n: int, exclude: str | None = None) -> list[str]:
        """Up to `n` distinct instances in ring order from `key`, skipping `exclude`."""
        return list(islice((name for name in self.walk(key) if name != exclude), n))


class DualRing:
    """Two rings with independent seeds: `pair(key)` gives DualMap's (c1, c2), c2 != c1 when the
    pool has two or more instances (c2 walks the second ring past c1)."""

    __slots__ = ("first", "second")

    def __init__(self, membership: Membership, seeds: tuple[int, int], vnodes_per_weight: int = DEFAULT_VNODES_PER_WEIGHT) -> None:
        if seeds[0] == seeds[1]:
            raise ValueError("the two rings need different seeds")
        self.first = HashRing(membership, seeds[0], vnodes_per_weight)
        self.second = HashRing(membership, seeds[1], vnodes_per_weight)

    def pair(self, key: Key) -> tuple[str, str]:
        c1 = self.first.lookup(key)
        rest = self.second.candidates(key, 1, exclude=c1)
        return c1, (rest[0] if rest else c1)


class RingCache:
    """Rings per pool membership, rebuilt only when membership or weights change; a small LRU so
    a router serving several pools keeps each pool's rings."""

    def __init__(self, seeds: tuple[int, int], vnodes_per_weight: int = DEFAULT_VNODES_PER_WEIGHT, max_pools: int = 16) -> None:
        self.seeds = seeds
        self.vnodes_per_weight = vnodes_per_weight
        self.max_pools = max_pools
        self._rings: OrderedDict[Membership, DualRing] = OrderedDict()
        self._last_ids: tuple[int, ...] = ()
        self._last_endpoints: tuple[Endpoint, ...] = ()  # held so the ids above cannot be reused
        self._last: DualRing | None = None
        self.positions: dict[str, int] = {}  # name -> index in the endpoints of the last `get`

    def get(self, endpoints: Sequence[Endpoint]) -> DualRing:
        """The rings of `endpoints`' membership; `positions` then maps each name to its index there."""
        # Fast path: the same endpoint objects as last call (frozen, so same ids = same membership).
        ids = tuple(map(id, endpoints))
        if ids == self._last_ids and self._last is not None:
            return self._last
        self.positions = {e.name: i for i, e in enumerate(endpoints)}
        membership = membership_of(endpoints)
        rings = self._rings.get(membership)
        if rings is None:
            rings = DualRing(membership, self.seeds, self.vnodes_per_weight)
            self._rings[membership] = rings
            if len(self._rings) > self.max_pools:
                self._rings.popitem(last=False)
        else:
            self._rings.move_to_end(membership)
        self._last_ids, self._last_endpoints, self._last = ids, tuple(endpoints), rings
        return rings


def remap_fraction(before: DualRing, after: DualRing, keys: Sequence[Key]) -> float:
    """Share of `keys` whose candidate pair differs between two layouts (a scale event's cost:
    those keys lose the cache they built on their old candidates)."""
    if not keys:
        return 0.0
    return sum(before.pair(k) != after.pair(k) for k in keys) / len(keys)
