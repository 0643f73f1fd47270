"""Keeping this process's entries in step with the shared document store: a full rebuild (on start, and when the
event feed was broken), then other replicas' puts and deletions as they happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import numpy as np

from fleetgate.cache.entries import Entries, embedded, outlived
from fleetgate.cache.index import Namespace, VectorIndex
from fleetgate.cache.stats import CacheStats
from fleetgate.cache.store import (
    CacheUnavailable,
    DocumentHead,
    DocumentStore,
    StoreEvent,
)
from fleetgate.core.clock import Clock

log = logging.getLogger("fleetgate.cache")


class StoreFollower:
    """Writes to `entries` only from the event loop; graphs are built in worker threads and swapped in whole."""

    def __init__(self, store: DocumentStore, entries: Entries, stats: CacheStats, *, wall_clock: Clock) -> None:
        self._store = store
        self._entries = entries
        self._stats = stats
        self._wall_clock = wall_clock  # the scale of the documents' `created_s`, shared by every replica
        self._task: asyncio.Task[None] | None = None

    async def rebuild(self) -> None:
        """Replace everything known with what the store holds; an unreachable store leaves it as it is."""
        heads: dict[str, DocumentHead] = {}  # by id: a Redis SCAN may return a key twice
        now_s = self._wall_clock()
        try:
            async for batch in self._store.heads():
                heads.update((head.entry_id, head) for head in batch if not outlived(head, now_s))
        except CacheUnavailable:
            self._stats.store_unavailable += 1
            log.warning("semantic cache rebuild skipped: store unavailable (will resync when it is back)")
            return
        by_namespace: dict[Namespace, list[DocumentHead]] = {}
        for head in heads.values():
            if embedded(head):
                by_namespace.setdefault(head.namespace, []).append(head)
        graphs: dict[Namespace, VectorIndex] = {}
        for namespace, embedded_heads in by_namespace.items():
            vectors = np.stack([h.vector for h in embedded_heads]).astype(np.float32)
            graphs[namespace] = await asyncio.to_thread(
                VectorIndex.build, [h.entry_id for h in embedded_heads], vectors, dim=self._entries.index.dim)
        self._entries.reset(heads.values(), graphs)
        self._stats.rebuilds += 1
        log.info("semantic cache index rebuilt: %d entries in %d namespaces", len(heads), len(graphs))

    async def apply(self, event: StoreEvent) -> None:
        """Apply another replica's change (or rebuild when the feed was broken)."""
        if event.op == "resync":
            await self.rebuild()
        elif event.op == "delete":
            self._entries.forget([event.entry_id], "deleted")
        elif event.op == "put" and event.head is not None:
            self._entries.remember(event.head)

    def start(self) -> None:
        """Follow the store's events in the background until `stop`."""
        self._task = asyncio.create_task(self._follow(), name="semantic-cache-follow")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _follow(self) -> None:
        async for event in self._store.events():
            try:
                await self.apply(event)
            except Exception:
                log.exception("semantic cache could not apply %s event", event.op)
