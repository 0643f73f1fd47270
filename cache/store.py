"""Where cached answers live: in Redis (shared by every gateway replica, survives restarts) or in memory.

The search index is in-process (cache/index.py); the store holds the documents. A document is split
into a *head* (namespace, vector, timestamps: what a replica needs to index it) and the *answer*
(text, finish_reason, and the question it answers: fetched only on a hit), so rebuilds and
replica-to-replica updates move small heads, never answers. The store also remembers for a while
which entry served which request, so a client can report a wrong hit (`SemanticCache.feedback`).

Redis layout (prefix `fleetgate:cache:` by default):
- `<prefix>doc:<entry_id>`: a hash {head: JSON, vec: float32 bytes, text, finish, max_tokens, question}, with
  a TTL (documents written before `question` existed lack it, and are read with `question` None);
- `<prefix>events`: a stream of {op: put|del, id, origin, head?, vec?} that every replica tails to learn
  the others' new entries and deletions (trimmed to about `events_max_len`);
- `<prefix>hit:<xxh3 of tenant and request id>`: JSON [entry_id, tenant, model, category] of a served hit,
  with a TTL; keyed by tenant so one tenant can neither read nor consume another's.

Every Redis failure becomes `CacheUnavailable`; after one, calls fail immediately for `cooldown_s`
(a circuit breaker) so an outage costs requests nothing, then the next call probes Redis again.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator, Literal, Protocol

import numpy as np
import orjson
import xxhash
from pydantic import BaseModel, ConfigDict

from fleetgate.cache.index import Namespace
from fleetgate.core.clock import Clock, monotonic_clock
from fleetgate.core.usage import Usage

log = logging.getLogger("fleetgate.cache")

DEFAULT_PREFIX = "fleetgate:cache:"
DEFAULT_MAX_SERVED_HITS = 100_000  # in memory: the oldest served hits are forgotten beyond this


class CacheUnavailable(Exception):
    """The document store cannot be reached; the cache treats it as a miss."""


@dataclass(frozen=True, slots=True)
class DocumentHead:
    """Everything needed to index an entry, without its answer."""

    entry_id: str
    namespace: Namespace
    context_hash: str  # hash of what must match exactly besides the embedded text (cache/keys.py)
    created_s: float  # wall-clock seconds (shared across replicas and restarts)
    ttl_s: float  # storage lifetime: the longest TTL the category's policy may ever grant
    vector: np.ndarray  # float32, unit length


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    finish_reason: str
    max_tokens: int | None = None  # of the request that produced it: a "length" answer only fits requests asking no more
    question: str | None = None  # the key text it answers (cache/keys.py); None: stored before it was kept, unverifiable
    usage: Usage | None = None  # the backend's usage for it; None: not reported, or stored before usage was kept


@dataclass(frozen=True, slots=True)
class CacheDocument:
    head: DocumentHead
    answer: Answer


@dataclass(frozen=True, slots=True)
class StoreEvent:
    """Another replica's change, or `resync` when the feed broke and the whole index must be rebuilt."""

    op: Literal["put", "delete", "resync"]
    entry_id: str = ""
    head: DocumentHead | None = None


@dataclass(frozen=True, slots=True)
class ServedHit:
    """Which entry answered a request from the cache: what a client's report of a wrong hit must drop."""

    entry_id: str
    namespace: Namespace  # its tenant is the only one that may report it


class DocumentStore(Protocol):
    async def put(self, documents: list[CacheDocument]) -> None:
        """Store documents (one round trip for the batch) and announce them to the other replicas."""
        ...

    async def answer(self, entry_id: str) -> Answer | None:
        """The answer of an entry, or None when it expired or was deleted."""
        ...

    async def delete(self, entry_ids: list[str]) -> None: ...

    async def remember_hit(self, request_id: str, hit: ServedHit, ttl_s: float) -> None:
        """Keep for `ttl_s` that `hit` answered `request_id` (for every replica)."""
        ...

    async def take_hit(self, request_id: str, tenant: str) -> ServedHit | None:
        """The hit `request_id` got if it was served to `tenant`, forgotten as it is read (a report counts once);
        None when unknown, expired, or another tenant's."""
        ...

    def heads(self, batch_size: int = 500) -> AsyncIterator[list[DocumentHead]]:
        """Every live document's head, in batches (the index rebuild on start)."""
        ...

    def events(self) -> AsyncIterator[StoreEvent]:
        """Other replicas' puts and deletions, forever (until cancelled)."""
        ...

    async def close(self) -> None: ...


class InMemoryDocumentStore:
    """The embedded default: documents in a dict of this process, expired by the injected clock."""

    def __init__(self, *, clock: Clock = time.time, max_served_hits: int = DEFAULT_MAX_SERVED_HITS) -> None:
        self._clock = clock
        self._documents: dict[str, CacheDocument] = {}
        self._hits: dict[tuple[str, str], tuple[ServedHit, float]] = {}  # (tenant, request id) -> hit, expiry; oldest first
        self._max_hits = max_served_hits

    def _live(self, document: CacheDocument) -> bool:
        return self._clock() < document.head.created_s + document.head.ttl_s

    async def put(self, documents: list[CacheDocument]) -> None:
        for document in documents:
            self._documents[document.head.entry_id] = document

    async def answer(self, entry_id: str) -> Answer | None:
        document = self._documents.get(entry_id)
        if document is None or not self._live(document):
            self._documents.pop(entry_id, None)
            return None
        return document.answer

    async def delete(self, entry_ids: list[str]) -> None:
        for entry_id in entry_ids:
            self._documents.pop(entry_id, None)

    async def remember_hit(self, request_id: str, hit: ServedHit, ttl_s: float) -> None:
        key = (hit.namespace.tenant, request_id)
        self._hits.pop(key, None)  # re-inserted last: the dict stays in expiry order
        self._hits[key] = (hit, self._clock() + ttl_s)
        while len(self._hits) > self._max_hits:
            del self._hits[next(iter(self._hits))]

    async def take_hit(self, request_id: str, tenant: str) -> ServedHit | None:
        hit, expires_s = self._hits.pop((tenant, request_id), (None, 0.0))
        return hit if self._clock() < expires_s else None

    async def heads(self, batch_size: int = 500) -> AsyncIterator[list[DocumentHead]]:
        live = [d.head for d in self._documents.values() if self._live(d)]
        for start in range(0, len(live), batch_size):
            yield live[start : start + batch_size]

    async def events(self) -> AsyncIterator[StoreEvent]:
        await asyncio.Event().wait()  # one process: nobody else writes
        yield StoreEvent("resync")  # pragma: no cover (never reached)

    async def close(self) -> None:
        self._documents.clear()
        self._hits.clear()


def _usage_field(usage: Usage) -> str:
    """A usage as one hash field: "prompt completion cached"."""
    return f"{usage.prompt_tokens} {usage.completion_tokens} {usage.cached_tokens}"


def _parse_usage(field: bytes) -> Usage | None:
    """The inverse of `_usage_field`; None for anything else (the entry is still served, with estimated usage)."""
    parts = field.split()
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        return None
    return Usage(*(int(part) for part in parts))


class _HeadJson(BaseModel):
    """The head as stored in Redis (validated on the way in: another replica may run another version)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    entry_id: str
    tenant: str
    model: str
    category: str
    context_hash: str
    created_s: float
    ttl_s: float

    @classmethod
    def of(cls, head: DocumentHead) -> "_HeadJson":
        ns = head.namespace
        return cls(entry_id=head.entry_id, tenant=ns.tenant, model=ns.model, category=ns.category,
                   context_hash=head.context_hash, created_s=head.created_s, ttl_s=head.ttl_s)

    def head(self, vector_bytes: bytes) -> DocumentHead:
        return DocumentHead(
            entry_id=self.entry_id,
            namespace=Namespace(self.tenant, self.model, self.category),
            context_hash=self.context_hash,
            created_s=self.created_s,
            ttl_s=self.ttl_s,
            vector=np.frombuffer(vector_bytes, dtype=np.float32).copy(),
        )


class RedisDocumentStore:
    """Documents in Redis hashes with TTLs, changes announced on a Redis stream."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        socket_timeout_s: float = 0.25,
        cooldown_s: float = 1.0,
        events_block_ms: int = 500,
        events_max_len: int = 100_000,
        clock: Clock = monotonic_clock,
    ) -> None:
        import redis.asyncio as redis

        self._redis_errors = (redis.RedisError, OSError, asyncio.TimeoutError)
        common = dict(socket_connect_timeout=socket_timeout_s, retry_on_timeout=False, health_check_interval=0)
        self._client = redis.Redis.from_url(url, socket_timeout=socket_timeout_s, **common)
        # the tail blocks server-side for events_block_ms, so its socket must wait longer than that
        self._tail = redis.Redis.from_url(url, socket_timeout=socket_timeout_s + events_block_ms / 1000, **common)
        self._prefix = prefix
        self._stream = f"{prefix}events"
        self._origin = uuid.uuid4().hex
        self._cooldown_s = cooldown_s
        self._block_ms = events_block_ms
        self._max_len = events_max_len
        self._clock = clock
        self._down_until_s = 0.0
        self.failures = 0  # calls that found Redis unavailable (for the warning counter)

    def _key(self, entry_id: str) -> str:
        return f"{self._prefix}doc:{entry_id}"

    def _hit_key(self, request_id: str, tenant: str) -> str:
        digest = xxhash.xxh3_128_hexdigest("\0".join((tenant, request_id)).encode())
        return f"{self._prefix}hit:{digest}"

    async def _call(self, operation):  # type: ignore[no-untyped-def]
        """Run one Redis operation behind the circuit breaker; every failure is CacheUnavailable."""
        if self._clock() < self._down_until_s:
            self.failures += 1
            raise CacheUnavailable("redis unavailable (cooling down)")
        try:
            return await operation()
        except self._redis_errors as error:
            self.failures += 1
            if self._down_until_s == 0.0 or self._clock() >= self._down_until_s:
                log.warning("semantic cache store unavailable: %s", error)
            self._down_until_s = self._clock() + self._cooldown_s
            raise CacheUnavailable(str(error)) from error

    async def put(self, documents: list[CacheDocument]) -> None:
        if not documents:
            return

        async def write() -> None:
            pipe = self._client.pipeline(transaction=False)
            for document in documents:
                head, key = document.head, self._key(document.head.entry_id)
                head_json = _HeadJson.of(head).model_dump_json()
                vec = np.asarray(head.vector, dtype=np.float32).tobytes()
                answer = document.answer
                fields = {"head": head_json, "vec": vec, "text": answer.text, "finish": answer.finish_reason,
                          "max_tokens": "" if answer.max_tokens is None else str(answer.max_tokens)}
                if answer.question is not None:
                    fields["question"] = answer.question
                if answer.usage is not None:
                    fields["usage"] = _usage_field(answer.usage)
                pipe.hset(key, mapping=fields)
                pipe.expire(key, max(1, int(np.ceil(head.ttl_s))))
                pipe.xadd(self._stream, {"op": "put", "id": head.entry_id, "origin": self._origin, "head": head_json, "vec": vec},
                          maxlen=self._max_len, approximate=True)
            await pipe.execute()

        await self._call(write)

    async def answer(self, entry_id: str) -> Answer | None:
        fields = ["text", "finish", "max_tokens", "question", "usage"]
        text, finish, max_tokens, question, usage = await self._call(
            lambda: self._client.hmget(self._key(entry_id), fields))
        if text is None or finish is None:
            return None
        return Answer(text.decode(), finish.decode(), int(max_tokens) if max_tokens else None,
                      None if question is None else question.decode(), None if usage is None else _parse_usage(usage))

    async def delete(self, entry_ids: list[str]) -> None:
        if not entry_ids:
            return

        async def remove() -> None:
            pipe = self._client.pipeline(transaction=False)
            pipe.delete(*(self._key(e) for e in entry_ids))
            for entry_id in entry_ids:
                pipe.xadd(self._stream, {"op": "del", "id": entry_id, "origin": self._origin}, maxlen=self._max_len, approximate=True)
            await pipe.execute()

        await self._call(remove)

    async def remember_hit(self, request_id: str, hit: ServedHit, ttl_s: float) -> None:
        ns = hit.namespace
        record = orjson.dumps([hit.entry_id, ns.tenant, ns.model, ns.category])
        key = self._hit_key(request_id, ns.tenant)
        await self._call(lambda: self._client.set(key, record, ex=max(1, int(np.ceil(ttl_s)))))

    async def take_hit(self, request_id: str, tenant: str) -> ServedHit | None:
        key = self._hit_key(request_id, tenant)

        async def take() -> bytes | None:
            pipe = self._client.pipeline(transaction=True)  # GET and DEL at once (GETDEL needs Redis 6.2)
            pipe.get(key)
            pipe.delete(key)
            record, _deleted = await pipe.execute()
            return record

        record = await self._call(take)
        if record is None:
            return None
        entry_id, hit_tenant, model, category = orjson.loads(record)
        return ServedHit(entry_id, Namespace(hit_tenant, model, category))

    async def heads(self, batch_size: int = 500) -> AsyncIterator[list[DocumentHead]]:
        cursor = 0
        while True:
            cursor, keys = await self._call(lambda: self._client.scan(cursor, match=f"{self._prefix}doc:*", count=batch_size))

            async def fetch(keys=keys):  # type: ignore[no-untyped-def]
                pipe = self._client.pipeline(transaction=False)
                for key in keys:
                    pipe.hmget(key, ["head", "vec"])
                return await pipe.execute()

            rows = await self._call(fetch) if keys else []
            batch = [_HeadJson.model_validate_json(h).head(v) for h, v in rows if h is not None and v is not None]
            if batch:
                yield batch
            if cursor == 0:
                return

    async def events(self) -> AsyncIterator[StoreEvent]:
        """Tail the stream from now on; after an outage, say `resync` once Redis answers again."""
        last_id = "$"
        broken = False
        while True:
            try:
                if last_id == "$":  # pin the position so nothing between two reads is lost
                    info = await self._tail.xinfo_stream(self._stream) if await self._tail.exists(self._stream) else None
                    last_id = info["last-generated-id"].decode() if info else "0-0"
                replies = await self._tail.xread({self._stream: last_id}, block=self._block_ms, count=500)
            except self._redis_errors as error:
                if not broken:
                    log.warning("semantic cache event feed lost: %s", error)
                broken = True
                last_id = "$"
                await asyncio.sleep(self._cooldown_s)  # background retry pace, not a test wait
                continue
            if broken:
                broken = False
                log.info("semantic cache event feed back: rebuilding the index from redis")
                yield StoreEvent("resync")
            for _stream, messages in replies or ():
                for message_id, fields in messages:
                    last_id = message_id.decode()
                    event = self._decode(fields)
                    if event is not None:
                        yield event

    def _decode(self, fields: dict[bytes, bytes]) -> StoreEvent | None:
        if fields.get(b"origin", b"").decode() == self._origin:
            return None
        entry_id = fields.get(b"id", b"").decode()
        op = fields.get(b"op")
        if op == b"del":
            return StoreEvent("delete", entry_id)
        if op == b"put" and b"head" in fields and b"vec" in fields:
            return StoreEvent("put", entry_id, _HeadJson.model_validate_json(fields[b"head"]).head(fields[b"vec"]))
        return None

    async def ping(self) -> bool:
        try:
            return bool(await self._call(self._client.ping))
        except CacheUnavailable:
            return False

    async def close(self) -> None:
        await self._client.aclose()
        await self._tail.aclose()
