"""Known entries: heads, per-namespace membership and graph membership move together; evictions are counted."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from fleetgate.cache.entries import Entries, embedded, outlived
from fleetgate.cache.index import Namespace, VectorIndex
from fleetgate.cache.stats import CacheStats
from fleetgate.cache.store import DocumentHead

FAQ = Namespace("t1", "m", "faq")
OTHER = Namespace("t2", "m", "faq")


def in_graph(entries: Entries, entry_id: str, namespace: Namespace = FAQ) -> bool:
    graph = entries.index.get(namespace)
    return graph is not None and entry_id in graph


@pytest.mark.parametrize(("age_s", "gone"), [(0.0, False), (99.9, False), (100.0, True), (500.0, True)])
def test_outlived_at_the_longest_ttl(make_head: Callable[..., DocumentHead], age_s: float, gone: bool) -> None:
    assert outlived(make_head("a", created_s=1_000.0, ttl_s=100.0), 1_000.0 + age_s) is gone


def test_remember_indexes_embedded_heads_only(entries: Entries, make_head: Callable[..., DocumentHead]) -> None:
    exact_only = make_head("long", vector=(0, 0, 0, 0))
    assert not embedded(exact_only) and embedded(make_head("short"))
    entries.remember(make_head("short"))
    entries.remember(exact_only)
    entries.remember(make_head("elsewhere", namespace=OTHER))
    assert in_graph(entries, "short") and not in_graph(entries, "long")
    assert entries.sizes() == {FAQ: 2, OTHER: 1}
    assert {e.head.entry_id for e in entries.in_namespace(OTHER)} == {"elsewhere"}


def test_forget_drops_everywhere_and_counts_by_category(
    entries: Entries, stats: CacheStats, make_head: Callable[..., DocumentHead],
) -> None:
    entries.remember(make_head("a"))
    entries.remember(make_head("b"))
    entries.forget(["a", "unknown"], "quota")
    entries.forget(["a"], "quota")  # already gone: not counted twice
    assert entries.get("a") is None and not in_graph(entries, "a") and in_graph(entries, "b")
    assert stats.evictions == {("faq", "quota"): 1}
    entries.forget(["b"], "expired")
    assert entries.sizes() == {}  # empty namespaces are not reported


def test_reset_replaces_everything(entries: Entries, make_head: Callable[..., DocumentHead]) -> None:
    entries.remember(make_head("old"))
    kept, exact_only = make_head("new"), make_head("new-long", vector=(0, 0, 0, 0))
    graph = VectorIndex.build(["new"], np.stack([kept.vector]), dim=4)
    entries.reset([kept, exact_only], {kept.namespace: graph})
    assert entries.get("old") is None and entries.get("new-long") is not None
    assert entries.index.get(kept.namespace) is graph
    assert entries.sizes() == {kept.namespace: 2}
