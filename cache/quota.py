"""Per-namespace quotas: which entries to evict so one more fits, the least valuable first."""

from __future__ import annotations

import heapq
from typing import Iterable

from fleetgate.cache.entries import Entries, Entry
from fleetgate.cache.index import Namespace


def least_valuable(entries: Iterable[Entry], count: int, *, now_s: float, ttl_s: float) -> list[str]:
    """The ids of the `count` entries worth least: expired under `ttl_s` first, then fewest hits, then oldest."""

    def value(entry: Entry) -> tuple[bool, int, float]:
        return (now_s - entry.head.created_s < ttl_s, entry.hits, entry.head.created_s)

    return [entry.head.entry_id for entry in heapq.nsmallest(count, entries, key=value)]


def make_room(entries: Entries, namespace: Namespace, max_entries: int, *, exclude: str, now_s: float, ttl_s: float) -> list[str]:
    """Evict from `namespace` so one more entry (`exclude`, which may be replacing itself) fits; the evicted ids."""
    others = [entry for entry in entries.in_namespace(namespace) if entry.head.entry_id != exclude]
    overflow = len(others) + 1 - max_entries
    if overflow <= 0:
        return []
    victims = least_valuable(others, overflow, now_s=now_s, ttl_s=ttl_s)
    entries.forget(victims, "quota")
    return victims
