"""The category-aware semantic cache: `fleetgate.core.plan.ResponseCache` over an in-process HNSW index.

A lookup is: policy gate (rules.py) -> exact match (xxh3 of the normalised key, no embedding) ->
wait for an identical in-flight miss (coalesce.py) -> embed (batched, off the loop) -> k-NN in
the request's (tenant, model, category) graph (search.py) -> first neighbour above the threshold
in force (adaptive.py) whose context matches, whose TTL holds and whose question the verifier
(verify.py) accepts -> its answer from the document store. Every hit is remembered by request id
for a while, so a client can report it wrong (`feedback`) and have its entry dropped everywhere.
A store evicts to the namespace's quota (quota.py) and now and then purges (purge.py);
other replicas' changes arrive through follow.py. This module only wires those parts together.

Any failure is a miss or a bypass, never an exception: the gateway must not fail because of its cache.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from fleetgate.cache.adaptive import LoadAdaptation, longest_ttl
from fleetgate.cache.coalesce import DEFAULT_COALESCE_TIMEOUT_S, Coalescer
from fleetgate.cache.embed import AsyncBatchingEmbedder
from fleetgate.cache.entries import Entries
from fleetgate.cache.follow import StoreFollower
from fleetgate.cache.index import Namespace, NamespacedIndex
from fleetgate.cache.keys import RequestKey, request_key
from fleetgate.cache.policy import CachePolicy
from fleetgate.cache.purge import Purger
from fleetgate.cache.quota import make_room
from fleetgate.cache.rules import bypass_reason, fits, refusal
from fleetgate.cache.search import (
    DEFAULT_K,
    Demand,
    Found,
    Search,
    Verification,
    Verifier,
)
from fleetgate.cache.stats import CacheStats
from fleetgate.cache.store import (
    Answer,
    CacheDocument,
    CacheUnavailable,
    DocumentHead,
    DocumentStore,
    ServedHit,
)
from fleetgate.cache.verify import default_model
from fleetgate.core.clock import Clock, monotonic_clock
from fleetgate.core.plan import CacheBypass, CacheHit, CacheLookup, CacheMiss, RoutePlan
from fleetgate.core.request import InferenceRequest
from fleetgate.core.usage import Usage

log = logging.getLogger("fleetgate.cache")

DEFAULT_MAX_KEY_CHARS = 1000  # about the 256 word pieces MiniLM reads; longer keys are exact-match only
DEFAULT_FEEDBACK_TTL_S = 3600.0  # how long after a hit its client may still report it wrong


@dataclass(frozen=True, slots=True)
class _MissKey:
    """What `store` needs to remember an answer without recomputing anything."""

    namespace: Namespace
    key: RequestKey
    vector: np.ndarray | None  # None: the key was too long for the model, exact-match only
    policy_name: str
    max_tokens: int | None  # requested: bounds which requests a "length" answer may serve
    leader: bool  # this miss owns the in-flight slot that identical lookups wait on


class SemanticCache:
    """See the module docstring. One per gateway process, built by the composition root.

    `clock` paces what only this process sees (coalescing deadlines, purges); `wall_clock` stamps and
    ages entries, because those ages are shared with other replicas and survive restarts. `verifier`
    defaults to the shipped model (cache/data/verifier.json).
    """

    def __init__(
        self,
        *,
        embedder: AsyncBatchingEmbedder,
        store: DocumentStore,
        policies: Mapping[str, CachePolicy],
        clock: Clock = monotonic_clock,
        wall_clock: Clock = time.time,
        k: int = DEFAULT_K,
        coalesce_timeout_s: float = DEFAULT_COALESCE_TIMEOUT_S,
        max_key_chars: int = DEFAULT_MAX_KEY_CHARS,
        verifier: Verifier | None = None,
        feedback_ttl_s: float = DEFAULT_FEEDBACK_TTL_S,
    ) -> None:
        self.stats = CacheStats()
        self._embedder = embedder
        self._store = store
        self._policies = dict(policies)
        self._wall_clock = wall_clock
        self._max_key_chars = max_key_chars
        self._feedback_ttl_s = feedback_ttl_s
        self._entries = Entries(NamespacedIndex(embedder.dim), self.stats.evictions)
        self._search = Search(self._entries, store, verifier or default_model(), self.stats.verifier_rejections, k)
        self._coalescer: Coalescer[Found] = Coalescer(clock, coalesce_timeout_s)
        self._adaptation = LoadAdaptation(self.stats.adaptations)
        self._purger = Purger(self._entries, clock=clock, wall_clock=wall_clock)
        self._follower = StoreFollower(store, self._entries, self.stats, wall_clock=wall_clock)

    # ---- lifecycle and configuration -------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild the index from the store, then follow other replicas' changes in the background."""
        await self._follower.rebuild()
        self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()
        await self._store.close()

    def update_policies(self, policies: Mapping[str, CachePolicy]) -> None:
        """Hot reload: new lookups use the new policies; existing entries stay until they expire."""
        self._policies = dict(policies)

    def set_pool_pressure(self, pool: str, over_slo: bool) -> None:
        """Mark `pool` over (or back under) its TTFT SLO; categories it serves relax (or restore)."""
        self._adaptation.set_pool_pressure(pool, over_slo, self._policies)

    def sizes(self) -> dict[Namespace, int]:
        """Entries per namespace (for the gauge)."""
        return self._entries.sizes()

    # ---- lookup ----------------------------------------------------------------------------------

    async def lookup(self, request: InferenceRequest, plan: RoutePlan) -> CacheLookup:
        category = plan.cache_policy or "none"
        try:
            result = await self._lookup(request, plan)
        except Exception:  # a bug must not fail the request: count it and go upstream
            log.exception("semantic cache lookup failed")
            result = CacheBypass("error")
        if isinstance(result, CacheHit):
            self.stats.hits[category] += 1
        elif isinstance(result, CacheMiss):
            self.stats.misses[category] += 1
        else:
            self.stats.bypasses[(category, result.reason)] += 1
        return result

    async def _lookup(self, request: InferenceRequest, plan: RoutePlan) -> CacheLookup:
        policy_name = plan.cache_policy
        if policy_name is None:
            return CacheBypass("no-policy")
        policy = self._policies.get(policy_name)
        reason = bypass_reason(request, policy)
        if reason is not None:
            return CacheBypass(reason)
        assert policy is not None
        pool = plan.pools[0] if plan.pools else None
        self._adaptation.served_by(policy_name, pool)
        namespace = Namespace(request.tenant, request.model, policy_name)
        key = request_key(request, namespace)
        if key is None:
            return CacheBypass("no-text")
        in_force = self._adaptation.effective(policy, pool)
        demand = Demand(request.max_tokens, self._wall_clock(), in_force.ttl_s)
        try:
            exact = await self._search.exact(key.entry_id, demand)
            if exact is not None:
                self.stats.exact_hits[policy_name] += 1
                return await self._hit(request, namespace, exact)
            if self._coalescer.live(key.entry_id):
                coalesced = await self._coalescer.wait(key.entry_id)
                if coalesced is not None and fits(coalesced.answer, request.max_tokens):
                    self.stats.coalesced[policy_name] += 1
                    return await self._hit(request, namespace, coalesced)
                leader = False
            else:
                leader = self._coalescer.lead(key.entry_id)  # claimed before embedding so identical lookups wait for us
        except CacheUnavailable:
            self.stats.store_unavailable += 1
            return CacheMiss(_MissKey(namespace, key, None, policy_name, request.max_tokens, leader=False))
        found: Found | None = None
        vector = None
        # the policy's verifier settings, never relaxed: load adaptation moves only `in_force`
        verification = Verification(key.text, policy.verifier_threshold) if policy.verify else None
        try:
            if len(key.text) <= self._max_key_chars:
                vector = await self._embedder.embed_one(key.text)
                found = await self._search.nearest(namespace, key.context_hash, vector, in_force.threshold, demand, verification)
        except CacheUnavailable:
            self.stats.store_unavailable += 1
        except BaseException:
            if leader:
                self._coalescer.settle(key.entry_id, None)
            raise
        if found is not None:
            if found.similarity < policy.threshold:
                self.stats.relaxed_hits[policy_name] += 1
            if leader:  # identical lookups that queued behind us share the hit
                self._coalescer.settle(key.entry_id, found)
            return await self._hit(request, namespace, found)
        return CacheMiss(_MissKey(namespace, key, vector, policy_name, request.max_tokens, leader=leader))

    async def _hit(self, request: InferenceRequest, namespace: Namespace, found: Found) -> CacheHit:
        """Serve `found`, remembering which entry answered this request id so its client can report it wrong.
        A store that cannot remember it does not stop the hit."""
        try:
            await self._store.remember_hit(request.request_id, ServedHit(found.entry_id, namespace), self._feedback_ttl_s)
        except CacheUnavailable:
            self.stats.store_unavailable += 1
        answer = found.answer
        return CacheHit(answer.text, answer.finish_reason, found.similarity, found.verifier_score, answer.usage)

    # ---- feedback --------------------------------------------------------------------------------

    async def feedback(self, request_id: str, tenant: str) -> bool:
        """A client reports that the hit it got as `request_id` answered another question: drop that entry from
        the store, this process and (through the store's event) every replica, and count a false hit.

        False when no hit served to `tenant` has that id within the feedback TTL (unknown, expired, already
        reported, or another tenant's: which one is never told), or when the store cannot be reached.
        """
        try:
            hit = await self._store.take_hit(request_id, tenant)
            if hit is None:
                return False
            await self._store.delete([hit.entry_id])
        except CacheUnavailable:
            self.stats.store_unavailable += 1
            return False
        self._entries.forget([hit.entry_id], "feedback")
        self.stats.false_hits[hit.namespace.category] += 1
        return True

    # ---- store -----------------------------------------------------------------------------------

    def release(self, miss: CacheMiss) -> None:
        """The upstream call of a miss failed: identical lookups waiting on it go upstream now, not at the timeout."""
        key = miss.key
        if isinstance(key, _MissKey) and key.leader:
            self._coalescer.settle(key.key.entry_id, None)

    async def store(self, miss: CacheMiss, text: str, finish_reason: str, usage: Usage | None = None) -> None:
        """Remember a clean answer and what it cost (waiters of the same miss get it at once). Never raises."""
        key = miss.key
        if not isinstance(key, _MissKey):
            return
        answer = Answer(text, finish_reason, key.max_tokens, question=key.key.text, usage=usage)
        refused = refusal(answer)
        if key.leader:  # the waiters asked the very same question: theirs is an exact hit on this entry
            self._coalescer.settle(key.key.entry_id, Found(key.key.entry_id, answer, 1.0) if refused is None else None)
        if refused is not None:
            self.stats.not_stored[(key.policy_name, refused)] += 1
            return
        policy = self._policies.get(key.policy_name)
        if policy is None or not policy.enabled:
            return
        try:
            await self._store_answer(key, policy, answer)
        except CacheUnavailable:
            self.stats.store_unavailable += 1
            self.stats.not_stored[(key.policy_name, "store-unavailable")] += 1
        except Exception:
            log.exception("semantic cache store failed")
            self.stats.not_stored[(key.policy_name, "error")] += 1

    async def _store_answer(self, key: _MissKey, policy: CachePolicy, answer: Answer) -> None:
        now_s = self._wall_clock()
        head = DocumentHead(
            entry_id=key.key.entry_id,
            namespace=key.namespace,
            context_hash=key.key.context_hash,
            created_s=now_s,
            ttl_s=longest_ttl(policy),
            vector=key.vector if key.vector is not None else np.zeros(self._embedder.dim, dtype=np.float32),
        )
        ttl_s = self._adaptation.effective_for_category(policy, key.namespace.category).ttl_s
        evicted = make_room(self._entries, key.namespace, policy.max_entries, exclude=head.entry_id, now_s=now_s, ttl_s=ttl_s)
        if evicted:
            try:
                await self._store.delete(evicted)
            except CacheUnavailable:
                self.stats.store_unavailable += 1  # Redis TTLs clean them up eventually
        await self._store.put([CacheDocument(head, answer)])
        self._entries.remember(head)
        self.stats.stores[key.policy_name] += 1
        await self._purger.maybe_purge()
