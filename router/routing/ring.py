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
    return xxhash.xxh3_64_intdigest(data, seed)


Membership = tuple[tuple[str, float], ...]


def membership_of(endpoints: Sequence[Endpoint]) -> Membership:
    """The (name, weight) pairs that determine a ring layout, in a canonical order."""
    return tuple(sorted((e.name, e.weight) for e in endpoints))


class HashRing:
    """One consistent-hash ring over named instances (see the module docstring)."""

    __slots__ = ("seed", "names", "_points", "_owners", "_last")

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
        self._last: tuple[Key, int] | None = None

    def _start(self, key: Key) -> int:
        last = self._last  # (key, start): DualMap's fallback walks from where its pair lookup started
        if last is not None and last[0] == key:
            return last[1]
        i = bisect_left(self._points, key_position(key, self.seed))
        i = 0 if i == len(self._points) else i
        self._last = (key, i)  # one assignment: a reader sees either the old pair or the new
        return i

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

    def first(self, key: Key, n: int) -> list[str]:
        """The first `n` distinct instances of `walk(key)` (fewer in a smaller pool). Read off a
        slice of the ring's points where they are distinct enough (nearly always: n << points
        per instance x instances), which costs a tenth of the walk's generator."""
        owners, total = self._owners, len(self._owners)
        span = 2 * n
        if span < total:
            i = self._start(key)
            window = owners[i : i + span] if i + span <= total else owners[i:] + owners[: i + span - total]
            distinct = list(dict.fromkeys(window))
            if len(distinct) >= n:
                names = self.names
                return [names[owner] for owner in distinct[:n]]
        return list(islice(self.walk(key), n))

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
        # The first instance other than c1 in the second ring's order, read off its points
        # directly: a walk's generator costs more than the whole lookup (one point, usually).
        second = self.second
        owners, names, total = second._owners, second.names, len(second._owners)
        i = second._start(key)
        for _ in range(total):
            name = names[owners[i]]
            if name != c1:
                return c1, name
            i = i + 1 if i + 1 < total else 0
        return c1, c1


class RingCache:
    """Rings per pool membership, rebuilt only when membership or weights change; a small LRU so
    a router serving several pools keeps each pool's rings."""

    def __init__(self, seeds: tuple[int, int], vnodes_per_weight: int = DEFAULT_VNODES_PER_WEIGHT, max_pools: int = 16) -> None:
        self.seeds = seeds
        self.vnodes_per_weight = vnodes_per_weight
        self.max_pools = max_pools
        self._rings: OrderedDict[Membership, DualRing] = OrderedDict()
        self._last_endpoints: list[Endpoint] = []
        self._last: DualRing | None = None
        self.positions: dict[str, int] = {}  # name -> index in the endpoints of the last `get`

    def get(self, endpoints: list[Endpoint]) -> DualRing:
        """The rings of `endpoints`' membership; `positions` then maps each name to its index there."""
        # Fast path: the same endpoints in the same order as last call. A list compare is one C
        # pass that stops at `is` for the same (frozen) objects and compares values otherwise.
        if self._last is not None and endpoints == self._last_endpoints:
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
        self._last_endpoints, self._last = list(endpoints), rings
        return rings


def remap_fraction(before: DualRing, after: DualRing, keys: Sequence[Key]) -> float:
    """Share of `keys` whose candidate pair differs between two layouts (a scale event's cost:
    those keys lose the cache they built on their old candidates)."""
    if not keys:
        return 0.0
    return sum(before.pair(k) != after.pair(k) for k in keys) / len(keys)
