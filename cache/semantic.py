"""The category-aware semantic cache: `fleetgate.core.plan.ResponseCache` over an in-process HNSW index.

A lookup is: policy gate (enabled, cacheable conditions) -> exact match (xxh3 of the normalised
key, no embedding) -> wait for an identical in-flight miss (coalescing) -> embed (batched, off
the loop) -> k-NN in the request's (tenant, model, category) graph -> first neighbour above the
threshold whose context matches and whose TTL holds -> its answer from the document store.

Load adaptation: while the pool a category is served by is over its SLO, the category's threshold
drops to `adaptive.min_threshold` and its TTL grows to `adaptive.max_ttl_s`; both are evaluated at
lookup time, so they return the moment the pressure is lifted. Documents are therefore stored for
the longest TTL the policy may ever grant, and the TTL in force is checked against their age.

Any failure is a miss or a bypass, never an exception: the gateway must not fail because of its cache.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import numpy as np
from fleetgate.cache.embed import AsyncBatchingEmbedder
from fleetgate.cache.index import Namespace, NamespacedIndex, VectorIndex
from fleetgate.cache.keys import RequestKey, request_key
from fleetgate.cache.policy import CachePolicy
from fleetgate.cache.store import (
    Answer,
    CacheDocument,
    CacheUnavailable,
    DocumentHead,
    DocumentStore,
    StoreEvent,
)
from fleetgate.core.clock import Clock
from fleetgate.core.plan import CacheBypass, CacheHit, CacheLookup, CacheMiss, RoutePlan
from fleetgate.core.request import InferenceRequest

log = logging.getLogger("fleetgate.cache")

# "length" answers are whole answers to their max_tokens (the emulator always ends so); they are only
# served to requests asking for no more tokens. Cut or errored streams never reach store().
CACHEABLE_FINISH_REASONS = frozenset({"stop", "length"})
DEFAULT_K = 4
DEFAULT_COALESCE_TIMEOUT_S = 10.0
DEFAULT_MAX_KEY_CHARS = 1000  # about the 256 word pieces MiniLM reads; longer keys are exact-match only
PURGE_INTERVAL_S = 60.0

LookupObserver = Callable[[str, str, float], None]
"""(category, outcome, seconds) after every lookup: the lead's hook for a latency histogram."""


@dataclass(slots=True)
class CacheStats:
    """Plain counters for metrics; keys are categories, or (category, reason)."""

    hits: Counter[str] = field(default_factory=Counter)
    exact_hits: Counter[str] = field(default_factory=Counter)  # subset of hits answered without embedding
    relaxed_hits: Counter[str] = field(default_factory=Counter)  # subset of hits only the relaxed threshold allowed
    coalesced: Counter[str] = field(default_factory=Counter)  # subset of hits served by an in-flight identical miss
    misses: Counter[str] = field(default_factory=Counter)
    bypasses: Counter[tuple[str, str]] = field(default_factory=Counter)
    stores: Counter[str] = field(default_factory=Counter)
    not_stored: Counter[tuple[str, str]] = field(default_factory=Counter)
    evictions: Counter[tuple[str, str]] = field(default_factory=Counter)  # reason: quota, expired, gone
    adaptations: Counter[tuple[str, str]] = field(default_factory=Counter)  # (category, relax|restore)
    store_unavailable: int = 0  # calls that found the document store down (logged as warnings)
    rebuilds: int = 0


@dataclass(slots=True)
class _Entry:
    head: DocumentHead
    hits: int = 0


@dataclass(frozen=True, slots=True)
class _MissKey:
    """What `store` needs to remember an answer without recomputing anything."""

    namespace: Namespace
    key: RequestKey
    vector: np.ndarray | None  # None: the key was too long for the model, exact-match only
    policy_name: str
    max_tokens: int | None  # requested: bounds which requests a "length" answer may serve
    leader: bool  # this miss owns the in-flight slot that identical lookups wait on


def _fits(answer: Answer, max_tokens: int | None) -> bool:
    """A "length" answer was cut at its request's max_tokens: it serves only requests asking for no more."""
    if answer.finish_reason != "length":
        return True
    return max_tokens is not None and answer.max_tokens is not None and max_tokens <= answer.max_tokens


class SemanticCache:
    """See the module docstring. One per gateway process, built by the composition root."""

    def __init__(
        self,
        *,
        embedder: AsyncBatchingEmbedder,
        store: DocumentStore,
        policies: Mapping[str, CachePolicy],
        clock: Clock = time.time,
        k: int = DEFAULT_K,
        coalesce_timeout_s: float = DEFAULT_COALESCE_TIMEOUT_S,
        max_key_chars: int = DEFAULT_MAX_KEY_CHARS,
        observer: LookupObserver | None = None,
    ) -> None:
        self.embedder = embedder
        self.store_backend = store
        self.policies = dict(policies)
        self.clock = clock  # wall-clock seconds: entries' ages are shared with other replicas via the store
        self.k = k
        self.coalesce_timeout_s = coalesce_timeout_s
        self.max_key_chars = max_key_chars
        self.observer = observer
        self.stats = CacheStats()
        self.index = NamespacedIndex(embedder.dim)
        self._entries: dict[str, _Entry] = {}
        self._by_namespace: dict[Namespace, set[str]] = {}  # includes exact-only entries, for quotas
        self._inflight: dict[str, tuple[asyncio.Future[Answer | None], float]] = {}
        self._pressured_pools: set[str] = set()
        self._pools_of_policy: dict[str, set[str]] = {}  # learned from plans: which pools serve a category
        self._follower: asyncio.Task[None] | None = None
        self._last_purge_s = clock()

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild the index from the store, then follow other replicas' changes in the background."""
        await self.rebuild()
        self._follower = asyncio.create_task(self._follow(), name="semantic-cache-follow")

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            try:
                await self._follower
            except asyncio.CancelledError:
                pass
            self._follower = None
        await self.store_backend.close()

    def update_policies(self, policies: Mapping[str, CachePolicy]) -> None:
        """Hot reload: new lookups use the new policies; existing entries stay until they expire."""
        self.policies = dict(policies)

    # ---- load adaptation -------------------------------------------------------------------------

    def set_pool_pressure(self, pool: str, over_slo: bool) -> None:
        """Mark `pool` over (or back under) its TTFT SLO; categories it serves relax (or restore)."""
        if over_slo == (pool in self._pressured_pools):
            return
        if over_slo:
            self._pressured_pools.add(pool)
        else:
            self._pressured_pools.discard(pool)
        direction = "relax" if over_slo else "restore"
        for policy_name, pools in self._pools_of_policy.items():
            policy = self.policies.get(policy_name)
            if pool in pools and policy is not None and policy.adaptive is not None:
                self.stats.adaptations[(policy_name, direction)] += 1
                log.info("semantic cache %s for category %s (pool %s over SLO: %s)", direction, policy_name, pool, over_slo)

    def on_fleet_snapshot(self, over_slo_pools: Iterable[str]) -> None:
        """Apply a whole picture: the given pools are over SLO, every other known one is not."""
        over = set(over_slo_pools)
        for pool in over | self._pressured_pools:
            self.set_pool_pressure(pool, pool in over)

    def effective(self, policy: CachePolicy, pool: str | None) -> tuple[float, float]:
        """(similarity threshold, TTL seconds) in force for a category served by `pool`."""
        if policy.adaptive is not None and pool in self._pressured_pools:
            return policy.adaptive.min_threshold, policy.adaptive.max_ttl_s
        return policy.threshold, policy.ttl_s

    # ---- lookup ----------------------------------------------------------------------------------

    async def lookup(self, request: InferenceRequest, plan: RoutePlan) -> CacheLookup:
        started_s = time.perf_counter()
        category = plan.cache_policy or "none"
        try:
            result = await self._lookup(request, plan)
        except Exception:  # a bug must not fail the request: count it and go upstream
            log.exception("semantic cache lookup failed")
            result = CacheBypass("error")
        if isinstance(result, CacheHit):
            self.stats.hits[category] += 1
            outcome = "hit"
        elif isinstance(result, CacheMiss):
            self.stats.misses[category] += 1
            outcome = "miss"
        else:
            self.stats.bypasses[(category, result.reason)] += 1
            outcome = "bypass"
        if self.observer is not None:
            self.observer(category, outcome, time.perf_counter() - started_s)
        return result

    def _bypass_reason(self, request: InferenceRequest, policy: CachePolicy | None) -> str | None:
        if policy is None:
            return "no-policy"
        if not policy.enabled:
            return "disabled"
        rules = policy.cacheable
        # an unset temperature counts as cacheable: the client asked for no particular diversity
        if rules.max_temperature is not None and request.temperature is not None and request.temperature > rules.max_temperature:
            return "temperature"
        if request.tools and not rules.tools:
            return "tools"
        if request.n > rules.max_n:
            return "n"
        return None

    async def _lookup(self, request: InferenceRequest, plan: RoutePlan) -> CacheLookup:
        policy_name = plan.cache_policy
        if policy_name is None:
            return CacheBypass("no-policy")
        policy = self.policies.get(policy_name)
        reason = self._bypass_reason(request, policy)
        if reason is not None:
            return CacheBypass(reason)
        assert policy is not None
        pool = plan.pools[0] if plan.pools else None
        if pool is not None:
            self._pools_of_policy.setdefault(policy_name, set()).add(pool)
        namespace = Namespace(request.tenant, request.model, policy_name)
        key = request_key(request, namespace)
        if key is None:
            return CacheBypass("no-text")
        threshold, ttl_s = self.effective(policy, pool)
        now_s = self.clock()
        try:
            exact = self._entries.get(key.entry_id)
            if exact is not None and self._fresh(exact, now_s, ttl_s):
                answer = await self._answer(exact, request.max_tokens)
                if answer is not None:
                    self.stats.exact_hits[policy_name] += 1
                    return CacheHit(answer.text, answer.finish_reason, 1.0)
            if self._inflight_live(key.entry_id):
                coalesced = await self._await_inflight(key.entry_id)
                if coalesced is not None and _fits(coalesced, request.max_tokens):
                    self.stats.coalesced[policy_name] += 1
                    return CacheHit(coalesced.text, coalesced.finish_reason, 1.0)
                leader = False
            else:
                leader = self._lead(key.entry_id)  # claimed before embedding so identical lookups wait for us
        except CacheUnavailable:
            self.stats.store_unavailable += 1
            return CacheMiss(_MissKey(namespace, key, None, policy_name, request.max_tokens, leader=False))
        found: tuple[Answer, float] | None = None
        vector = None
        try:
            if len(key.text) <= self.max_key_chars:
                vector = await self.embedder.embed_one(key.text)
                found = await self._search(namespace, key, vector, request.max_tokens, threshold, ttl_s, now_s)
        except CacheUnavailable:
            self.stats.store_unavailable += 1
        except BaseException:
            if leader:
                self._settle(key.entry_id, None)
            raise
        if found is not None:
            answer, similarity = found
            if similarity < policy.threshold:
                self.stats.relaxed_hits[policy_name] += 1
            if leader:  # identical lookups that queued behind us share the hit
                self._settle(key.entry_id, answer)
            return CacheHit(answer.text, answer.finish_reason, similarity)
        return CacheMiss(_MissKey(namespace, key, vector, policy_name, request.max_tokens, leader=leader))

    async def _search(
        self, namespace: Namespace, key: RequestKey, vector: np.ndarray, max_tokens: int | None, threshold: float, ttl_s: float, now_s: float
    ) -> tuple[Answer, float] | None:
        """The answer and similarity of the best fresh neighbour with the same context, above `threshold`."""
        for neighbour in self.index.search(namespace, vector, self.k, threshold):
            entry = self._entries.get(neighbour.entry_id)
            if entry is None or entry.head.context_hash != key.context_hash or not self._fresh(entry, now_s, ttl_s):
                continue
            answer = await self._answer(entry, max_tokens)
            if answer is not None:
                return answer, neighbour.similarity
        return None

    def _fresh(self, entry: _Entry, now_s: float, ttl_s: float) -> bool:
        """Within the TTL in force; past the longest TTL it can never be served again: evict it."""
        age_s = now_s - entry.head.created_s
        if age_s >= entry.head.ttl_s:
            self._forget([entry.head.entry_id], "expired")
            return False
        return age_s < ttl_s

    async def _answer(self, entry: _Entry, max_tokens: int | None) -> Answer | None:
        """The entry's answer from the store if it fits the request; an entry the store no longer has is forgotten."""
        answer = await self.store_backend.answer(entry.head.entry_id)
        if answer is None:
            self._forget([entry.head.entry_id], "gone")
            return None
        if not _fits(answer, max_tokens):
            return None
        entry.hits += 1
        return answer

    # ---- coalescing ------------------------------------------------------------------------------

    def _inflight_live(self, entry_id: str) -> bool:
        held = self._inflight.get(entry_id)
        return held is not None and time.monotonic() - held[1] < self.coalesce_timeout_s

    def _lead(self, entry_id: str) -> bool:
        """Take the in-flight slot of `entry_id` (no live one is held) so identical lookups wait for our answer."""
        if self.coalesce_timeout_s <= 0:
            return False
        now_s = time.monotonic()
        for stale in [e for e, (_, since) in self._inflight.items() if now_s - since >= self.coalesce_timeout_s]:
            self._settle(stale, None)  # a leader that never stored (upstream failed): release its waiters
        self._inflight[entry_id] = (asyncio.get_running_loop().create_future(), now_s)
        return True

    async def _await_inflight(self, entry_id: str) -> Answer | None:
        held = self._inflight.get(entry_id)
        if held is None:
            return None
        remaining_s = self.coalesce_timeout_s - (time.monotonic() - held[1])
        try:
            return await asyncio.wait_for(asyncio.shield(held[0]), max(0.0, remaining_s))
        except TimeoutError:
            return None

    def _settle(self, entry_id: str, answer: Answer | None) -> None:
        held = self._inflight.pop(entry_id, None)
        if held is not None and not held[0].done():
            held[0].set_result(answer)

    # ---- store -----------------------------------------------------------------------------------

    def release(self, miss: CacheMiss) -> None:
        """The upstream call of a miss failed: identical lookups waiting on it go upstream now, not at the timeout."""
        key = miss.key
        if isinstance(key, _MissKey) and key.leader:
            self._settle(key.key.entry_id, None)

    async def store(self, miss: CacheMiss, text: str, finish_reason: str) -> None:
        """Remember a clean answer (waiters of the same miss get it at once). Never raises."""
        key = miss.key
        if not isinstance(key, _MissKey):
            return
        cacheable = finish_reason in CACHEABLE_FINISH_REASONS and bool(text)
        answer = Answer(text, finish_reason, key.max_tokens)
        if key.leader:
            self._settle(key.key.entry_id, answer if cacheable else None)
        if not cacheable:
            self.stats.not_stored[(key.policy_name, f"finish-{finish_reason}" if text else "empty")] += 1
            return
        policy = self.policies.get(key.policy_name)
        if policy is None or not policy.enabled:
            return
        try:
            await self._store(key, policy, answer)
        except CacheUnavailable:
            self.stats.store_unavailable += 1
            self.stats.not_stored[(key.policy_name, "store-unavailable")] += 1
        except Exception:
            log.exception("semantic cache store failed")
            self.stats.not_stored[(key.policy_name, "error")] += 1

    async def _store(self, key: _MissKey, policy: CachePolicy, answer: Answer) -> None:
        vector = key.vector if key.vector is not None else np.zeros(self.embedder.dim, dtype=np.float32)
        max_ttl_s = policy.adaptive.max_ttl_s if policy.adaptive is not None else policy.ttl_s
        head = DocumentHead(
            entry_id=key.key.entry_id,
            namespace=key.namespace,
            context_hash=key.key.context_hash,
            created_s=self.clock(),
            ttl_s=max_ttl_s,
            vector=vector,
        )
        evicted = self._make_room(key.namespace, policy, exclude=head.entry_id)
        if evicted:
            try:
                await self.store_backend.delete(evicted)
            except CacheUnavailable:
                self.stats.store_unavailable += 1  # Redis TTLs clean them up eventually
        await self.store_backend.put([CacheDocument(head, answer)])
        self._remember(head)
        self.stats.stores[key.policy_name] += 1
        await self._maybe_purge()

    def _remember(self, head: DocumentHead) -> None:
        self._entries[head.entry_id] = _Entry(head)
        self._by_namespace.setdefault(head.namespace, set()).add(head.entry_id)
        if np.any(head.vector):  # a zero vector marks an exact-match-only entry (key too long to embed)
            self.index.graph(head.namespace).add([head.entry_id], head.vector[None, :])

    def _make_room(self, namespace: Namespace, policy: CachePolicy, *, exclude: str) -> list[str]:
        """Evict the least valuable entries so one more fits the quota: expired first, then fewest hits, then oldest."""
        ids = [e for e in self._by_namespace.get(namespace, ()) if e != exclude]
        overflow = len(ids) + 1 - policy.max_entries
        if overflow <= 0:
            return []
        now_s = self.clock()
        pressured = self._pools_of_policy.get(namespace.category, set()) & self._pressured_pools
        _, ttl_s = self.effective(policy, next(iter(pressured), None))

        def value(entry_id: str) -> tuple[bool, int, float]:
            entry = self._entries[entry_id]
            return (now_s - entry.head.created_s < ttl_s, entry.hits, entry.head.created_s)

        victims = heapq.nsmallest(overflow, ids, key=value)
        self._forget(victims, "quota")
        return victims

    def _forget(self, entry_ids: list[str], reason: str) -> None:
        """Drop entries from this process (the store is told separately where needed)."""
        for entry_id in entry_ids:
            entry = self._entries.pop(entry_id, None)
            if entry is None:
                continue
            self._by_namespace[entry.head.namespace].discard(entry_id)
            graph = self.index.get(entry.head.namespace)
            if graph is not None:
                graph.remove([entry_id])
            self.stats.evictions[(entry.head.namespace.category, reason)] += 1

    async def _maybe_purge(self) -> None:
        """Now and then: drop entries past their longest TTL, compact graphs full of holes (in a thread)."""
        now_s = self.clock()
        if now_s - self._last_purge_s < PURGE_INTERVAL_S:
            return
        self._last_purge_s = now_s
        self._forget([e for e, entry in self._entries.items() if now_s - entry.head.created_s >= entry.head.ttl_s], "expired")
        for namespace in self.index.namespaces():
            graph = self.index.get(namespace)
            if graph is not None and graph.deleted_slots > max(1024, len(graph)):
                entry_ids, vectors = graph.vectors()
                compact = await asyncio.to_thread(VectorIndex.build, entry_ids, vectors, dim=graph.dim)
                if self.index.get(namespace) is graph and len(graph) == len(entry_ids):  # unchanged meanwhile
                    self.index.replace(namespace, compact)

    # ---- replicas and restarts -------------------------------------------------------------------

    async def rebuild(self) -> None:
        """Replace the whole index with what the store holds (start, and after a lost event feed)."""
        by_namespace: dict[Namespace, list[DocumentHead]] = {}
        entries: dict[str, _Entry] = {}
        now_s = self.clock()
        try:
            async for batch in self.store_backend.heads():
                for head in batch:
                    if now_s - head.created_s < head.ttl_s:
                        entries[head.entry_id] = _Entry(head)
                        if np.any(head.vector):
                            by_namespace.setdefault(head.namespace, []).append(head)
        except CacheUnavailable:
            self.stats.store_unavailable += 1
            log.warning("semantic cache rebuild skipped: store unavailable (will resync when it is back)")
            return
        graphs: dict[Namespace, VectorIndex] = {}
        for namespace, heads in by_namespace.items():
            vectors = np.stack([h.vector for h in heads]).astype(np.float32)
            graphs[namespace] = await asyncio.to_thread(VectorIndex.build, [h.entry_id for h in heads], vectors, dim=self.embedder.dim)
        self.index.swap(graphs)
        self._entries = entries
        self._by_namespace = {}
        for entry_id, entry in entries.items():
            self._by_namespace.setdefault(entry.head.namespace, set()).add(entry_id)
        self.stats.rebuilds += 1
        log.info("semantic cache index rebuilt: %d entries in %d namespaces", len(entries), len(graphs))

    async def _follow(self) -> None:
        async for event in self.store_backend.events():
            try:
                await self.apply(event)
            except Exception:
                log.exception("semantic cache could not apply %s event", event.op)

    async def apply(self, event: StoreEvent) -> None:
        """Apply another replica's change (or rebuild when the feed was broken)."""
        if event.op == "resync":
            await self.rebuild()
        elif event.op == "delete":
            self._forget([event.entry_id], "deleted")
        elif event.op == "put" and event.head is not None:
            self._remember(event.head)

    def sizes(self) -> dict[Namespace, int]:
        """Entries per namespace (for the gauge)."""
        return {namespace: len(ids) for namespace, ids in self._by_namespace.items() if ids}
