"""Housekeeping of the known entries, now and then: drop those past their longest TTL, compact graphs full of holes.

Expiry alone would only be noticed when a lookup reads an entry; this bounds what unread entries cost.
"""

from __future__ import annotations

import asyncio

from fleetgate.cache.entries import Entries, outlived
from fleetgate.core.clock import Clock

PURGE_INTERVAL_S = 60.0
MIN_HOLES_TO_COMPACT = 1024  # and more holes than live entries: below that, reused slots fill them


class Purger:
    """Paced on `clock` (in-process, monotonic); ages are read on `wall_clock`, the scale entries are stamped on."""

    def __init__(self, entries: Entries, *, clock: Clock, wall_clock: Clock) -> None:
        self._entries = entries
        self._clock = clock
        self._wall_clock = wall_clock
        self._last_s = clock()

    async def maybe_purge(self) -> None:
        """Purge if `PURGE_INTERVAL_S` has passed since the last time (or since start)."""
        now_s = self._clock()
        if now_s - self._last_s < PURGE_INTERVAL_S:
            return
        self._last_s = now_s
        wall_s = self._wall_clock()
        self._entries.forget([e.head.entry_id for e in self._entries if outlived(e.head, wall_s)], "expired")
        index = self._entries.index
        for namespace in index.namespaces():
            graph = index.get(namespace)
            if graph is not None and graph.deleted_slots > max(MIN_HOLES_TO_COMPACT, len(graph)):
                entry_ids, vectors = graph.vectors()  # read here: the graph is only touched from the event loop
                compact = await asyncio.to_thread(graph.rebuilt, entry_ids, vectors)
                if index.get(namespace) is graph and len(graph) == len(entry_ids):  # unchanged meanwhile
                    index.replace(namespace, compact)
