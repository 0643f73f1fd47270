"""Requests and tokens per minute, per key and per tenant, with the `limits` library (async storage).

Strategy: the sliding window counter (two counters per limit: this minute and the last one,
the last weighted by how much of it still overlaps the window). It costs one Redis script per
limit and O(1) memory whatever the limit, where the exact moving window keeps one entry per
request or token (a 100k TPM limit would be a 100k-entry list), and unlike the fixed window it
never lets a burst of twice the limit through across a minute boundary. Its error is the
assumption that last minute's hits were spread evenly.

TPM is charged at admission with the prompt's tokens plus `max_tokens` x `n` (only the prompt
when the client sets no max_tokens), then corrected with the real usage when the request ends:
`correct` adds the difference, negative or positive, to the same counters unconditionally (a
refund must never be refused, and neither must a debt).

Storage is Redis when the gateway has a `redis_url` (every replica shares the counters), memory
otherwise. When Redis fails, limits fail open: the request goes through, the failure is counted in
`fleetgate_ratelimit_errors_total`, and the outage is logged once, when it starts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Literal, TypeVar

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError

from fleetgate.core.errors import RateLimitError
from fleetgate.core.request import InferenceRequest
from fleetgate.router.metrics import GatewayMetrics

log = logging.getLogger("fleetgate.ratelimit")

Scope = Literal["key", "tenant"]
Kind = Literal["rpm", "tpm"]
_UNBOUNDED = 2**52  # a limit no correction reaches: corrections always apply
T = TypeVar("T")
_NAMES = {"rpm": "requests per min (RPM)", "tpm": "tokens per min (TPM)"}


@dataclass(frozen=True, slots=True)
class Subject:
    """Whose limits a request counts against: its key's and its tenant's (None: no such limit)."""

    key_id: str
    tenant: str
    key_rpm: int | None = None
    key_tpm: int | None = None
    tenant_rpm: int | None = None
    tenant_tpm: int | None = None


def admission_tokens(request: InferenceRequest) -> int:
    """What a request is charged at admission: its prompt plus the most it may generate."""
    return request.prompt_tokens + (request.max_tokens or 0) * request.n


class RateLimiter:
    def __init__(self, metrics: GatewayMetrics, redis_url: str | None = None, *, timeout_s: float = 0.25) -> None:
        if redis_url is None:
            self._storage: MemoryStorage | RedisStorage = MemoryStorage()
        else:
            self._storage = RedisStorage(f"async+{redis_url}", implementation="redispy", wrap_exceptions=True,
                                         key_prefix="fleetgate-limits", socket_timeout=timeout_s,
                                         socket_connect_timeout=timeout_s)
        self._limiter = SlidingWindowCounterRateLimiter(self._storage)
        self._items: dict[tuple[Kind, int], RateLimitItem] = {}
        self._metrics = metrics
        self._failing = False

    async def admit(self, subject: Subject, tokens: int) -> None:
        """Charge one request and `tokens` to every limit of `subject`, or none of them and raise
        RateLimitError (429) naming the first limit that is spent."""
        checks = [(scope, kind, limit, cost) for scope, kind, limit, cost in (
            ("key", "rpm", subject.key_rpm, 1), ("key", "tpm", subject.key_tpm, tokens),
            ("tenant", "rpm", subject.tenant_rpm, 1), ("tenant", "tpm", subject.tenant_tpm, tokens),
        ) if limit is not None and cost > 0]
        if not checks:
            return
        hits = await self._guarded(lambda: asyncio.gather(*(
            self._limiter.hit(self._item(kind, limit), *_identity(subject, scope), cost=cost)
            for scope, kind, limit, cost in checks)))
        if hits is None or all(hits):
            return
        await self._guarded(lambda: asyncio.gather(*(
            self._adjust(kind, limit, _identity(subject, scope), -cost)
            for (scope, kind, limit, cost), hit in zip(checks, hits) if hit)))
        scope, kind, limit, _ = next(check for check, hit in zip(checks, hits) if not hit)
        raise await self._refusal(subject, scope, kind, limit)

    async def correct(self, subject: Subject, charged_tokens: int, used_tokens: int) -> None:
        """Replace a request's admission charge by what it really used, on its TPM limits."""
        delta = used_tokens - charged_tokens
        if delta == 0:
            return
        adjustments = [self._adjust("tpm", limit, _identity(subject, scope), delta)
                       for scope, limit in (("key", subject.key_tpm), ("tenant", subject.tenant_tpm))
                       if limit is not None]
        if adjustments:
            await self._guarded(lambda: asyncio.gather(*adjustments))

    def _item(self, kind: Kind, limit: int) -> RateLimitItem:
        item = self._items.get((kind, limit))
        if item is None:
            item = self._items[(kind, limit)] = RateLimitItemPerMinute(limit, namespace=kind)
        return item

    async def _adjust(self, kind: Kind, limit: int, identity: tuple[str, str], amount: int) -> None:
        item = self._item(kind, limit)  # the same counter `hit` uses: the key depends on kind and identity only
        await self._storage.acquire_sliding_window_entry(item.key_for(*identity), _UNBOUNDED, item.get_expiry(),
                                                         amount)

    async def _refusal(self, subject: Subject, scope: Scope, kind: Kind, limit: int) -> RateLimitError:
        stats = await self._guarded(lambda: self._limiter.get_window_stats(self._item(kind, limit),
                                                                           *_identity(subject, scope)))
        retry_s = min(60, max(1, math.ceil(stats.reset_time - time.time()))) if stats is not None else 1
        self._metrics.ratelimited.labels(scope, kind).inc()
        whose = f"key {subject.key_id}" if scope == "key" else f"tenant {subject.tenant}"
        return RateLimitError(f"Rate limit reached for {whose} on {_NAMES[kind]}: Limit {limit}. "
                              f"Please try again in {retry_s}s.",
                              error_type="requests" if kind == "rpm" else "tokens", retry_after_s=retry_s)

    async def _guarded(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """The call's result, or None when the storage failed (fail open)."""
        try:
            result = await call()
        except StorageError as error:
            self._metrics.ratelimit_errors.inc()
            if not self._failing:
                self._failing = True
                log.warning("rate-limit storage failed (%s): limits are not enforced until it answers again",
                            type(error.storage_error).__name__)
            return None
        if self._failing:
            self._failing = False
            log.warning("rate-limit storage answers again: limits are enforced")
        return result


def _identity(subject: Subject, scope: Scope) -> tuple[str, str]:
    return (scope, subject.key_id if scope == "key" else subject.tenant)
