"""Fixtures shared by the semantic cache's unit tests: a manual clock, counters, and known entries over tiny vectors."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pytest

from fleetgate.cache.entries import Entries
from fleetgate.cache.index import Namespace, NamespacedIndex
from fleetgate.cache.stats import CacheStats
from fleetgate.cache.store import DocumentHead
from fleetgate.core.clock import ManualClock

FAQ = Namespace("t1", "m", "faq")  # where make_head puts entries unless told otherwise
DIM = 4  # vectors in these tests are spelt out, e.g. (1, 0, 0, 0); (0, 0, 0, 0) marks an exact-only entry


@pytest.fixture()
def clock() -> ManualClock:
    return ManualClock(1_000.0)


@pytest.fixture()
def stats() -> CacheStats:
    return CacheStats()


@pytest.fixture()
def entries(stats: CacheStats) -> Entries:
    return Entries(NamespacedIndex(DIM), stats.evictions)


@pytest.fixture()
def make_head() -> Callable[..., DocumentHead]:
    def make(
        entry_id: str,
        *,
        created_s: float = 1_000.0,
        ttl_s: float = 100.0,
        vector: Sequence[float] = (1, 0, 0, 0),
        context_hash: str = "ctx",
        namespace: Namespace = FAQ,
    ) -> DocumentHead:
        v = np.asarray(vector, dtype=np.float32)
        norm = float(np.linalg.norm(v))
        return DocumentHead(entry_id, namespace, context_hash, created_s, ttl_s, v / norm if norm else v)

    return make
