"""In-process HNSW vector index of the semantic cache, one graph per (tenant, model, category).

hnswlib was chosen by measurement (`fleetgate bench cache-index`, figures in docs/cache.md): the
lowest single-query latency from Python, exact-enough recall, and in-place deletion with slot reuse
(`mark_deleted` + `replace_deleted`), which TTL and quota eviction need. Separate graphs per
namespace make tenant isolation structural: a search cannot even see another tenant's vectors.

Ownership: one `VectorIndex` is mutated and searched from one thread (the event loop) only; bulk
builds (`build`) make a fresh graph that can be built in a worker thread and then swapped in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import hnswlib
import numpy as np

DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 128
DEFAULT_EF_SEARCH = 64
DEFAULT_INITIAL_CAPACITY = 256


@dataclass(frozen=True, slots=True)
class Namespace:
    """The scope of cache sharing: entries are never served across tenants, models or categories."""

    tenant: str
    model: str
    category: str


@dataclass(frozen=True, slots=True)
class Neighbour:
    entry_id: str
    similarity: float  # cosine similarity of unit vectors, 1.0 = identical


class VectorIndex:
    """One namespace's HNSW graph with string entry ids, deletion and capacity growth."""

    def __init__(
        self,
        dim: int,
        *,
        initial_capacity: int = DEFAULT_INITIAL_CAPACITY,
        m: int = DEFAULT_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef_search: int = DEFAULT_EF_SEARCH,
    ) -> None:
        self.dim = dim
        self._m = m
        self._ef_construction = ef_construction
        self._ef_search = ef_search
        self._graph = hnswlib.Index(space="ip", dim=dim)
        self._graph.init_index(max_elements=max(1, initial_capacity), M=m, ef_construction=ef_construction, allow_replace_deleted=True)
        self._graph.set_ef(ef_search)
        self._graph.set_num_threads(1)
        self._label_of: dict[str, int] = {}
        self._id_of: dict[int, str] = {}
        self._next_label = 0
        self._deleted = 0  # marked-deleted slots not yet reused

    def __len__(self) -> int:
        return len(self._label_of)

    def __contains__(self, entry_id: str) -> bool:
        return entry_id in self._label_of

    @property
    def deleted_slots(self) -> int:
        """Marked-deleted slots not yet reused (many of them degrade the graph: compact)."""
        return self._deleted

    @property
    def capacity(self) -> int:
        return self._graph.get_max_elements()

    def ids(self) -> Iterator[str]:
        return iter(self._label_of)

    def add(self, entry_ids: list[str], vectors: np.ndarray) -> None:
        """Insert (or replace) entries; deleted slots are reused, and the graph doubles when full."""
        if len(set(entry_ids)) != len(entry_ids):
            raise ValueError("duplicate entry ids in one insert")
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(entry_ids), self.dim)
        self.remove(entry_id for entry_id in entry_ids if entry_id in self._label_of)
        needed = self._graph.get_current_count() + max(0, len(entry_ids) - self._deleted)
        if needed > self.capacity:
            self._graph.resize_index(max(needed, 2 * self.capacity))
        labels = np.arange(self._next_label, self._next_label + len(entry_ids), dtype=np.int64)
        self._next_label += len(entry_ids)
        reused = min(self._deleted, len(entry_ids))
        if reused:
            self._graph.add_items(vectors[:reused], labels[:reused], replace_deleted=True)
            self._deleted -= reused
        if reused < len(entry_ids):
            self._graph.add_items(vectors[reused:], labels[reused:])
        for entry_id, label in zip(entry_ids, labels.tolist()):
            self._label_of[entry_id] = label
            self._id_of[label] = entry_id

    def remove(self, entry_ids: Iterable[str]) -> int:
        """Mark entries deleted (their slots are reused by later inserts); unknown ids are ignored."""
        removed = 0
        for entry_id in list(entry_ids):
            label = self._label_of.pop(entry_id, None)
            if label is None:
                continue
            del self._id_of[label]
            self._graph.mark_deleted(label)
            self._deleted += 1
            removed += 1
        return removed

    def search(self, vector: np.ndarray, k: int, min_similarity: float) -> list[Neighbour]:
        """Up to `k` nearest live entries at or above `min_similarity`, best first."""
        k = min(k, len(self._label_of))
        if k <= 0:
            return []
        query = np.asarray(vector, dtype=np.float32).reshape(1, self.dim)
        while True:
            try:
                labels, distances = self._graph.knn_query(query, k=k, num_threads=1)
                break
            except RuntimeError:  # too few reachable live nodes for k (heavy deletion): ask for fewer
                if k == 1:
                    return []
                k //= 2
        found = []
        for label, distance in zip(labels[0].tolist(), distances[0].tolist()):
            similarity = 1.0 - distance
            entry_id = self._id_of.get(label)
            if entry_id is not None and similarity >= min_similarity:
                found.append(Neighbour(entry_id, similarity))
        return found

    def vectors(self) -> tuple[list[str], np.ndarray]:
        """The live entries and their vectors (for compaction and rebuilds)."""
        entry_ids = list(self._label_of)
        if not entry_ids:
            return [], np.zeros((0, self.dim), dtype=np.float32)
        labels = [self._label_of[entry_id] for entry_id in entry_ids]
        return entry_ids, np.asarray(self._graph.get_items(labels, return_type="numpy"), dtype=np.float32)

    def rebuilt(self, entry_ids: list[str], vectors: np.ndarray) -> VectorIndex:
        """A fresh graph with this one's parameters holding just these entries (read with `vectors()`):
        restores search quality after heavy churn. Touches nothing of `self` but its parameters, so it
        may run in a worker thread."""
        return self.build(entry_ids, vectors, dim=self.dim, m=self._m, ef_construction=self._ef_construction, ef_search=self._ef_search)

    @classmethod
    def build(cls, entry_ids: list[str], vectors: np.ndarray, *, dim: int, **params: int) -> VectorIndex:
        """A new index holding exactly these entries (bulk insert; safe to run in a worker thread)."""
        index = cls(dim, initial_capacity=max(DEFAULT_INITIAL_CAPACITY, len(entry_ids)), **params)
        if entry_ids:
            index.add(entry_ids, vectors)
        return index


class NamespacedIndex:
    """The set of per-namespace graphs, created on first insert."""

    def __init__(self, dim: int, **params: int) -> None:
        self.dim = dim
        self._params = params
        self._graphs: dict[Namespace, VectorIndex] = {}

    def get(self, namespace: Namespace) -> VectorIndex | None:
        return self._graphs.get(namespace)

    def graph(self, namespace: Namespace) -> VectorIndex:
        graph = self._graphs.get(namespace)
        if graph is None:
            graph = self._graphs[namespace] = VectorIndex(self.dim, **self._params)
        return graph

    def replace(self, namespace: Namespace, graph: VectorIndex) -> None:
        """Swap in a graph built elsewhere (a rebuild or compaction)."""
        self._graphs[namespace] = graph

    def search(self, namespace: Namespace, vector: np.ndarray, k: int, min_similarity: float) -> list[Neighbour]:
        graph = self._graphs.get(namespace)
        return graph.search(vector, k, min_similarity) if graph is not None else []

    def sizes(self) -> dict[Namespace, int]:
        """Live entries per namespace (for the entries-per-namespace gauge)."""
        return {namespace: len(graph) for namespace, graph in self._graphs.items()}

    def namespaces(self) -> list[Namespace]:
        return list(self._graphs)

    def swap(self, graphs: dict[Namespace, VectorIndex]) -> None:
        """Replace every graph at once (the result of a full rebuild)."""
        self._graphs = graphs
