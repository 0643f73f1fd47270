"""The front door: who may call (keys file), which models, and how much (rate limits), decided
before a request reaches the gateway; and the TPM correction once its real usage is known.

Without a keys file it lets everything through unchanged (the gateway is open, as before).
"""

from __future__ import annotations

import asyncio
from typing import Mapping

from fleetgate.core.request import InferenceRequest
from fleetgate.core.usage import Usage
from fleetgate.router.keyring import KeyRing
from fleetgate.router.keys import KeyEntry
from fleetgate.router.ratelimit import RateLimiter, Subject, admission_tokens


class FrontDoor:
    def __init__(self, ring: KeyRing | None = None, limiter: RateLimiter | None = None) -> None:
        self.ring = ring
        self.limiter = limiter
        self._corrections: set[asyncio.Task[None]] = set()

    @property
    def open(self) -> bool:
        """No keys file: every caller is served, as its own hashed tenant."""
        return self.ring is None

    def identify(self, headers: Mapping[str, str]) -> KeyEntry | None:
        """The caller's key (401 when it is not valid); None when the gateway is open."""
        return self.ring.verify(headers) if self.ring is not None else None

    async def admit(self, request: InferenceRequest, key: KeyEntry | None) -> None:
        """403 when the key may not use the request's model, 429 when a limit is spent; else charge it."""
        if key is None or self.ring is None:
            return
        self.ring.authorize(key, request.model)
        if self.limiter is not None:
            await self.limiter.admit(self._subject(key.id, key.tenant), admission_tokens(request))

    def on_usage(self, request: InferenceRequest, _pool: str, usage: Usage) -> None:
        """Gateway usage listener: correct the admission charge with the tokens really used."""
        if self.limiter is None or request.key_id is None:
            return
        used = usage.prompt_tokens + usage.completion_tokens
        task = asyncio.ensure_future(self.limiter.correct(self._subject(request.key_id, request.tenant),
                                                          admission_tokens(request), used))
        self._corrections.add(task)
        task.add_done_callback(self._corrections.discard)

    def _subject(self, key_id: str, tenant: str) -> Subject:
        """The limits in effect now (a reload may have changed or removed the key since admission)."""
        assert self.ring is not None
        key = self.ring.key(key_id)
        tenant_limits = self.ring.tenant_limits(tenant)
        return Subject(key_id=key_id, tenant=tenant,
                       key_rpm=key.rpm if key else None, key_tpm=key.tpm if key else None,
                       tenant_rpm=tenant_limits.rpm if tenant_limits else None,
                       tenant_tpm=tenant_limits.tpm if tenant_limits else None)
