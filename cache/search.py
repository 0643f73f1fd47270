"""Finding a servable answer among the known entries: the exact entry, or the best fresh neighbour with the same context.

Reading an entry is also where stale knowledge is noticed: an entry past its longest TTL, or one the
store no longer has, is forgotten on the spot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleetgate.cache.entries import Entries, Entry, outlived
from fleetgate.cache.index import Namespace
from fleetgate.cache.rules import fits
from fleetgate.cache.store import Answer, DocumentStore

DEFAULT_K = 4


@dataclass(frozen=True, slots=True)
class Demand:
    """What an entry must satisfy to serve one request."""

    max_tokens: int | None  # requested: bounds which "length" answers fit
    now_s: float  # wall-clock seconds, the scale of the entries' `created_s`
    ttl_s: float  # the TTL in force for the request's category


@dataclass(frozen=True, slots=True)
class Found:
    answer: Answer
    similarity: float


class Search:
    """Reads entries' answers from the document store (which may raise `CacheUnavailable`)."""

    def __init__(self, entries: Entries, store: DocumentStore, k: int = DEFAULT_K) -> None:
        self._entries = entries
        self._store = store
        self._k = k

    async def exact(self, entry_id: str, demand: Demand) -> Answer | None:
        """The answer of the entry with exactly this id, if it may serve."""
        entry = self._entries.get(entry_id)
        if entry is None or not self._fresh(entry, demand):
            return None
        return await self._answer(entry, demand)

    async def nearest(self, namespace: Namespace, context_hash: str, vector: np.ndarray, threshold: float, demand: Demand) -> Found | None:
        """The best of the `k` nearest neighbours above `threshold` that has this context and may serve."""
        for neighbour in self._entries.index.search(namespace, vector, self._k, threshold):
            entry = self._entries.get(neighbour.entry_id)
            if entry is None or entry.head.context_hash != context_hash or not self._fresh(entry, demand):
                continue
            answer = await self._answer(entry, demand)
            if answer is not None:
                return Found(answer, neighbour.similarity)
        return None

    def _fresh(self, entry: Entry, demand: Demand) -> bool:
        """Within the TTL in force; past the longest TTL it can never be served again: evict it."""
        if outlived(entry.head, demand.now_s):
            self._entries.forget([entry.head.entry_id], "expired")
            return False
        return demand.now_s - entry.head.created_s < demand.ttl_s

    async def _answer(self, entry: Entry, demand: Demand) -> Answer | None:
        """The entry's answer from the store if it fits the request (counted as a hit); one the store lost is forgotten."""
        answer = await self._store.answer(entry.head.entry_id)
        if answer is None:
            self._entries.forget([entry.head.entry_id], "gone")
            return None
        if not fits(answer, demand.max_tokens):
            return None
        entry.hits += 1
        return answer
