"""What this process knows is cached: the heads of the store's documents, per namespace, and their vector graphs.

One place keeps the three in step, so every way an entry comes or goes (a store, another replica's
event, a rebuild, an eviction) updates the quotas' view and the search index together.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from fleetgate.cache.index import Namespace, NamespacedIndex, VectorIndex
from fleetgate.cache.store import DocumentHead


@dataclass(slots=True)
class Entry:
    head: DocumentHead
    hits: int = 0  # per replica: counting them in the store would make every hit a write


def outlived(head: DocumentHead, now_s: float) -> bool:
    """Past the longest TTL its policy may grant: it can never be served again."""
    return now_s - head.created_s >= head.ttl_s


def embedded(head: DocumentHead) -> bool:
    """A zero vector marks an exact-match-only entry (its key was too long to embed): it has no place in a graph."""
    return bool(np.any(head.vector))


class Entries:
    """Heads by entry id and by namespace (exact-only entries included, for quotas) plus the graphs they are in."""

    def __init__(self, index: NamespacedIndex, evictions: Counter[tuple[str, str]]) -> None:
        self.index = index
        self._evictions = evictions
        self._entries: dict[str, Entry] = {}
        self._by_namespace: dict[Namespace, set[str]] = {}

    def get(self, entry_id: str) -> Entry | None:
        return self._entries.get(entry_id)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries.values())

    def in_namespace(self, namespace: Namespace) -> list[Entry]:
        return [self._entries[entry_id] for entry_id in self._by_namespace.get(namespace, ())]

    def remember(self, head: DocumentHead) -> None:
        self._entries[head.entry_id] = Entry(head)
        self._by_namespace.setdefault(head.namespace, set()).add(head.entry_id)
        if embedded(head):
            self.index.graph(head.namespace).add([head.entry_id], head.vector[None, :])

    def forget(self, entry_ids: Iterable[str], reason: str) -> None:
        """Drop entries from this process, counted as evictions for `reason` (the store is told separately where needed)."""
        for entry_id in entry_ids:
            entry = self._entries.pop(entry_id, None)
            if entry is None:
                continue
            self._by_namespace[entry.head.namespace].discard(entry_id)
            graph = self.index.get(entry.head.namespace)
            if graph is not None:
                graph.remove([entry_id])
            self._evictions[(entry.head.namespace.category, reason)] += 1

    def reset(self, heads: Iterable[DocumentHead], graphs: dict[Namespace, VectorIndex]) -> None:
        """Replace everything at once with a rebuild's result: `graphs` must index the embedded ones of `heads`."""
        self.index.swap(graphs)
        self._entries = {head.entry_id: Entry(head) for head in heads}
        self._by_namespace = {}
        for entry_id, entry in self._entries.items():
            self._by_namespace.setdefault(entry.head.namespace, set()).add(entry_id)

    def sizes(self) -> dict[Namespace, int]:
        """Entries per namespace (for the gauge)."""
        return {namespace: len(ids) for namespace, ids in self._by_namespace.items() if ids}
