"""Search: the exact entry or the best fresh neighbour with the same context that the verifier accepts; stale
knowledge is forgotten on read."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest

from fleetgate.cache.entries import Entries
from fleetgate.cache.index import Namespace
from fleetgate.cache.search import Demand, Found, Search, Verification
from fleetgate.cache.stats import CacheStats
from fleetgate.cache.store import (
    Answer,
    CacheDocument,
    CacheUnavailable,
    DocumentHead,
    InMemoryDocumentStore,
)
from fleetgate.cache.verify import Verdict
from fleetgate.core.clock import ManualClock

NS = Namespace("t1", "m", "faq")
NOW = Demand(max_tokens=None, now_s=1_000.0, ttl_s=10.0)
ASKED = "how do i reset my password"
QUERY = np.asarray((1, 0, 0, 0), dtype=np.float32)


@dataclass
class ScriptedVerifier:
    """Scores a candidate question by `scores` (else 0.9), accepts at the threshold asked (else 0.5), records each call."""

    scores: dict[str, float] = field(default_factory=dict)
    calls: list[tuple[str, str, float, float | None]] = field(default_factory=list)

    def verify(self, query: str, candidate: str, cosine: float, threshold: float | None = None) -> Verdict:
        self.calls.append((query, candidate, cosine, threshold))
        score = self.scores.get(candidate, 0.9)
        return Verdict(score, score >= (0.5 if threshold is None else threshold))


def searcher(entries: Entries, store: InMemoryDocumentStore, verifier: ScriptedVerifier | None = None,
             rejections: Counter[str] | None = None, k: int = 4) -> Search:
    return Search(entries, store, verifier or ScriptedVerifier(), Counter() if rejections is None else rejections, k)


async def known(entries: Entries, store: InMemoryDocumentStore, head: DocumentHead, answer: Answer | None = None) -> None:
    """An entry this process knows and the store holds (unless `answer` is None)."""
    entries.remember(head)
    if answer is not None:
        await store.put([CacheDocument(head, answer)])


@pytest.fixture()
def store(clock: ManualClock) -> InMemoryDocumentStore:
    return InMemoryDocumentStore(clock=clock)


@pytest.mark.parametrize(
    ("age_s", "answer", "demand", "served", "evicted"),
    [
        (0.0, Answer("A", "stop"), NOW, True, None),
        (9.9, Answer("A", "stop"), NOW, True, None),
        (10.0, Answer("A", "stop"), NOW, False, None),  # past the TTL in force, still within its longest
        (50.0, Answer("A", "stop"), Demand(None, 1_000.0, ttl_s=60.0), True, None),  # a relaxed TTL serves it
        (100.0, Answer("A", "stop"), NOW, False, "expired"),  # past the longest TTL: never again
        (0.0, None, NOW, False, "gone"),  # the store lost it (another replica deleted it, Redis expired it)
        (0.0, Answer("A", "length", 16), Demand(32, 1_000.0, 10.0), False, None),  # cut shorter than asked
    ],
)
async def test_exact(
    entries: Entries, stats: CacheStats, store: InMemoryDocumentStore, make_head: Callable[..., DocumentHead],
    age_s: float, answer: Answer | None, demand: Demand, served: bool, evicted: str | None,
) -> None:
    await known(entries, store, make_head("e", created_s=1_000.0 - age_s, ttl_s=100.0), answer)
    verifier = ScriptedVerifier()
    search = searcher(entries, store, verifier)
    assert await search.exact("e", demand) == (Found("e", answer, 1.0) if served else None)
    assert await search.exact("unknown", demand) is None
    assert verifier.calls == []  # the very same question needs no verification
    assert (entries.get("e") is None) == (evicted is not None)
    assert stats.evictions == ({("faq", evicted): 1} if evicted else {})
    assert entries.get("e") is None or entries.get("e").hits == int(served)


async def test_nearest_skips_other_contexts_and_stale_neighbours(
    entries: Entries, store: InMemoryDocumentStore, make_head: Callable[..., DocumentHead]
) -> None:
    await known(entries, store, make_head("same-text-other-context", vector=(1, 0, 0, 0), context_hash="other"), Answer("X", "stop"))
    await known(entries, store, make_head("closest-but-old", vector=(1, 0.1, 0, 0), created_s=980.0), Answer("Y", "stop"))
    await known(entries, store, make_head("close", vector=(1, 0.3, 0, 0)), Answer("Z", "stop"))
    await known(entries, store, make_head("far", vector=(0, 1, 0, 0)), Answer("W", "stop"))
    search = searcher(entries, store)
    found = await search.nearest(NS, "ctx", QUERY, 0.9, NOW, None)
    assert isinstance(found, Found) and found.answer.text == "Z" and found.entry_id == "close"
    assert found.similarity == pytest.approx(1 / np.hypot(1, 0.3), abs=1e-4) and found.verifier_score is None
    assert await search.nearest(NS, "ctx", QUERY, 0.99, NOW, None) is None  # only the stale one is that close
    assert await search.nearest(Namespace("t2", "m", "faq"), "ctx", QUERY, 0.0, NOW, None) is None


async def test_nearest_serves_the_first_candidate_the_verifier_accepts(
    entries: Entries, store: InMemoryDocumentStore, make_head: Callable[..., DocumentHead]
) -> None:
    await known(entries, store, make_head("closest", vector=(1, 0.1, 0, 0)), Answer("X", "stop", question="how do i reset my pin"))
    await known(entries, store, make_head("next", vector=(1, 0.3, 0, 0)), Answer("Y", "stop", question="how can i reset my password"))
    verifier, rejections = ScriptedVerifier(scores={"how do i reset my pin": 0.2}), Counter[str]()
    found = await searcher(entries, store, verifier, rejections).nearest(NS, "ctx", QUERY, 0.9, NOW, Verification(ASKED, 0.6))
    assert isinstance(found, Found) and (found.entry_id, found.answer.text, found.verifier_score) == ("next", "Y", 0.9)
    assert [(q, c, round(cos, 4), t) for q, c, cos, t in verifier.calls] == [
        (ASKED, "how do i reset my pin", round(1 / np.hypot(1, 0.1), 4), 0.6),  # each candidate with its own cosine
        (ASKED, "how can i reset my password", round(1 / np.hypot(1, 0.3), 4), 0.6),
    ]
    assert rejections == {"faq": 1}
    assert (entries.get("closest").hits, entries.get("next").hits) == (0, 1)  # a rejected candidate earns no hit


@pytest.mark.parametrize(("verification", "served"), [(Verification(ASKED, None), False), (None, True)])
async def test_a_document_without_its_question_cannot_be_verified(
    entries: Entries, store: InMemoryDocumentStore, make_head: Callable[..., DocumentHead],
    verification: Verification | None, served: bool,
) -> None:
    await known(entries, store, make_head("old"), Answer("A", "stop"))  # stored before questions were kept
    verifier, rejections = ScriptedVerifier(), Counter[str]()
    found = await searcher(entries, store, verifier, rejections).nearest(NS, "ctx", QUERY, 0.9, NOW, verification)
    assert (found is not None) == served and verifier.calls == []
    assert rejections == ({} if served else {"faq": 1})


async def test_k_bounds_how_many_neighbours_are_tried(
    entries: Entries, store: InMemoryDocumentStore, make_head: Callable[..., DocumentHead],
) -> None:
    await known(entries, store, make_head("nearest-other-context", vector=(1, 0, 0, 0), context_hash="other"), Answer("X", "stop"))
    await known(entries, store, make_head("second", vector=(1, 0.2, 0, 0)), Answer("Y", "stop"))
    assert await searcher(entries, store, k=1).nearest(NS, "ctx", QUERY, 0.5, NOW, None) is None
    assert await searcher(entries, store, k=2).nearest(NS, "ctx", QUERY, 0.5, NOW, None) is not None


async def test_an_unavailable_store_raises_for_the_caller_to_count(
    entries: Entries, make_head: Callable[..., DocumentHead], clock: ManualClock,
) -> None:
    class DownStore(InMemoryDocumentStore):
        async def answer(self, entry_id: str) -> Answer | None:
            raise CacheUnavailable("down")

    entries.remember(make_head("e"))
    with pytest.raises(CacheUnavailable):
        await searcher(entries, DownStore(clock=clock)).exact("e", NOW)
    assert entries.get("e") is not None  # not forgotten: the store is down, not empty
