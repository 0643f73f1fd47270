"""Per-namespace HNSW index: ids, deletion with slot reuse, growth, thresholds, compaction, isolation."""

from __future__ import annotations

import numpy as np
import pytest

from fleetgate.cache.index import Namespace, NamespacedIndex, VectorIndex


def unit(rng: np.random.Generator, n: int, dim: int = 32) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_search_finds_itself_and_respects_threshold_and_k(rng: np.random.Generator) -> None:
    vectors = unit(rng, 50)
    index = VectorIndex(32, initial_capacity=4)  # forces several doublings
    index.add([f"e{i}" for i in range(50)], vectors)
    assert len(index) == 50 and index.capacity >= 50
    best = index.search(vectors[10], k=4, min_similarity=0.0)
    assert best[0].entry_id == "e10" and best[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert len(best) <= 4 and [n.similarity for n in best] == sorted((n.similarity for n in best), reverse=True)
    assert [n.entry_id for n in index.search(vectors[10], k=4, min_similarity=0.999)] == ["e10"]


def test_removed_entries_are_never_returned_and_slots_are_reused(rng: np.random.Generator) -> None:
    vectors = unit(rng, 20)
    index = VectorIndex(32, initial_capacity=20)
    index.add([f"e{i}" for i in range(20)], vectors)
    assert index.remove(["e3", "e4", "missing"]) == 2
    assert "e3" not in index and len(index) == 18
    assert all(n.entry_id not in {"e3", "e4"} for n in index.search(vectors[3], k=20, min_similarity=-1.0))
    index.add(["new1", "new2"], unit(rng, 2))
    assert index.capacity == 20  # the two deleted slots were reused, no growth


def test_replacing_an_id_keeps_one_entry(rng: np.random.Generator) -> None:
    a, b = unit(rng, 2)
    index = VectorIndex(32)
    index.add(["x"], a[None])
    index.add(["x"], b[None])
    assert len(index) == 1
    assert index.search(b, k=2, min_similarity=0.0)[0].similarity == pytest.approx(1.0, abs=1e-5)


def test_search_on_empty_and_fully_deleted_index(rng: np.random.Generator) -> None:
    index = VectorIndex(32)
    assert index.search(unit(rng, 1)[0], k=4, min_similarity=0.0) == []
    index.add(["a"], unit(rng, 1))
    index.remove(["a"])
    assert index.search(unit(rng, 1)[0], k=4, min_similarity=-1.0) == []


def test_compaction_keeps_live_entries_only(rng: np.random.Generator) -> None:
    vectors = unit(rng, 30)
    index = VectorIndex(32)
    index.add([f"e{i}" for i in range(30)], vectors)
    index.remove([f"e{i}" for i in range(0, 30, 2)])
    compact = index.rebuilt(*index.vectors())
    assert sorted(compact.ids()) == sorted(index.ids())
    assert compact.search(vectors[1], k=1, min_similarity=0.99)[0].entry_id == "e1"


def test_namespaces_never_see_each_other(rng: np.random.Generator) -> None:
    v = unit(rng, 1)
    index = NamespacedIndex(32)
    acme, other = Namespace("acme", "m", "chat"), Namespace("other", "m", "chat")
    index.graph(acme).add(["a"], v)
    assert index.search(other, v[0], 4, 0.0) == []
    assert index.search(Namespace("acme", "m2", "chat"), v[0], 4, 0.0) == []
    assert [n.entry_id for n in index.search(acme, v[0], 4, 0.0)] == ["a"]
    assert index.sizes() == {acme: 1}


def test_duplicate_ids_in_one_insert_are_rejected(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError):
        VectorIndex(32).add(["a", "a"], unit(rng, 2))
