"""Finding a servable answer among the known entries: the exact entry, or the best fresh neighbour with the same
context that the verifier accepts.

Reading an entry is also where stale knowledge is noticed: an entry past its longest TTL, or one the
store no longer has, is forgotten on the spot.

The verifier runs inline on the event loop: about 0.15 ms p50 / 0.3 ms p99 a candidate
(cache/verify_bench.py), less than a hop to a worker thread would cost.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fleetgate.cache.entries import Entries, Entry, outlived
from fleetgate.cache.index import Namespace
from fleetgate.cache.rules import fits
from fleetgate.cache.store import Answer, DocumentStore
from fleetgate.cache.verify import Verdict

DEFAULT_K = 4
UNVERIFIABLE = Verdict(0.0, False)  # a document stored without its question: nothing to compare the query with


@dataclass(frozen=True, slots=True)
class Demand:
    """What an entry must satisfy to serve one request."""

    max_tokens: int | None  # requested: bounds which "length" answers fit
    now_s: float  # wall-clock seconds, the scale of the entries' `created_s`
    ttl_s: float  # the TTL in force for the request's category


@dataclass(frozen=True, slots=True)
class Verification:
    """How similarity candidates are checked before one is served: the asked text against each one's question."""

    query: str  # the request key's text, as embedded
    threshold: float | None  # the verifier score needed; None: the verifier's own operating point


class Verifier(Protocol):
    """Judges whether a cached question asks what the query asks (cache/verify.py's VerifierModel)."""

    def verify(self, query: str, candidate: str, cosine: float, threshold: float | None = None) -> Verdict: ...


@dataclass(frozen=True, slots=True)
class Found:
    entry_id: str
    answer: Answer
    similarity: float  # 1.0 for the exact entry
    verifier_score: float | None = None  # None: not verified (the exact entry, or verification off)


class Search:
    """Reads entries' answers from the document store (which may raise `CacheUnavailable`); counts the candidates
    the verifier rejects per category in `rejections`."""

    def __init__(self, entries: Entries, store: DocumentStore, verifier: Verifier, rejections: Counter[str], k: int = DEFAULT_K) -> None:
        self._entries = entries
        self._store = store
        self._verifier = verifier
        self._rejections = rejections
        self._k = k

    async def exact(self, entry_id: str, demand: Demand) -> Found | None:
        """The entry with exactly this id, if it may serve (it asks the same question: no verification)."""
        entry = self._entries.get(entry_id)
        if entry is None or not self._fresh(entry, demand):
            return None
        answer = await self._answer(entry, demand)
        return None if answer is None else _served(entry, Found(entry_id, answer, 1.0))

    async def nearest(
        self, namespace: Namespace, context_hash: str, vector: np.ndarray, threshold: float, demand: Demand,
        verification: Verification | None,
    ) -> Found | None:
        """The best of the `k` nearest neighbours above `threshold` that has this context, may serve, and (unless
        `verification` is None) is accepted by the verifier."""
        for neighbour in self._entries.index.search(namespace, vector, self._k, threshold):
            entry = self._entries.get(neighbour.entry_id)
            if entry is None or entry.head.context_hash != context_hash or not self._fresh(entry, demand):
                continue
            answer = await self._answer(entry, demand)
            if answer is None:
                continue
            verdict = None if verification is None else self._verify(verification, answer, neighbour.similarity)
            if verdict is not None and not verdict.accepted:
                self._rejections[namespace.category] += 1
                continue
            score = None if verdict is None else verdict.score
            return _served(entry, Found(neighbour.entry_id, answer, neighbour.similarity, score))
        return None

    def _verify(self, verification: Verification, answer: Answer, cosine: float) -> Verdict:
        if answer.question is None:
            return UNVERIFIABLE
        return self._verifier.verify(verification.query, answer.question, cosine, verification.threshold)

    def _fresh(self, entry: Entry, demand: Demand) -> bool:
        """Within the TTL in force; past the longest TTL it can never be served again: evict it."""
        if outlived(entry.head, demand.now_s):
            self._entries.forget([entry.head.entry_id], "expired")
            return False
        return demand.now_s - entry.head.created_s < demand.ttl_s

    async def _answer(self, entry: Entry, demand: Demand) -> Answer | None:
        """The entry's answer from the store if it fits the request; one the store lost is forgotten."""
        answer = await self._store.answer(entry.head.entry_id)
        if answer is None:
            self._entries.forget([entry.head.entry_id], "gone")
            return None
        return answer if fits(answer, demand.max_tokens) else None


def _served(entry: Entry, found: Found) -> Found:
    """Count the hit on the entry (quota eviction keeps the most used)."""
    entry.hits += 1
    return found
