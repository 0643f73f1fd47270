"""Who is calling: the `Authorization: Bearer` key checked against the keys file, which is
hot-reloaded like the policy (a changed file is swapped in only when valid; a bad one is logged
with its YAML paths and the keys in effect stay).

Every refusal is the same 401 whatever the reason, and no message quotes the key.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Callable, Mapping

from fleetgate.core.clock import Clock, monotonic_clock
from fleetgate.core.filewatch import ChangedFile
from fleetgate.core.errors import AuthenticationError, PermissionDeniedError
from fleetgate.core.yamlconf import ConfigError
from fleetgate.router.keys import KeyEntry, KeysFile, Limits, key_id, load_keys, utc_now

log = logging.getLogger("fleetgate.keys")


def bearer(headers: Mapping[str, str]) -> str:
    """The token of `Authorization: Bearer <token>` (lower-case header names); "" when absent."""
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class KeyRing:
    """The keys in effect, swapped whole on reload (a request reads one consistent file)."""

    def __init__(self, keys: KeysFile, *, now: Callable[[], datetime] = utc_now) -> None:
        self._now = now
        self.swap(keys)

    def swap(self, keys: KeysFile) -> None:
        self._file = keys
        self._by_id = keys.by_id()

    def verify(self, headers: Mapping[str, str]) -> KeyEntry:
        """The entry of the caller's key; AuthenticationError (401) when it is missing, unknown,
        revoked or expired."""
        token = bearer(headers)
        if not token:
            raise AuthenticationError("You didn't provide an API key: send it as `Authorization: Bearer <key>`.")
        ident = key_id(token)
        entry = self._by_id.get(ident) if ident is not None else None
        if entry is None or not entry.matches(token) or entry.revoked or entry.expired(self._now()):
            raise AuthenticationError("Incorrect API key provided, or the key is revoked or expired.")
        return entry

    def authorize(self, entry: KeyEntry, model: str) -> None:
        """PermissionDeniedError (403) when the key may not use `model`."""
        if not entry.allows(model):
            raise PermissionDeniedError(f"this API key may not use the model {model!r}", param="model")

    def key(self, ident: str) -> KeyEntry | None:
        return self._by_id.get(ident)

    def tenant_limits(self, tenant: str) -> Limits | None:
        return self._file.tenants.get(tenant)


class KeysWatcher:
    """Reloads the keys file into a KeyRing when its mtime or size changes (checked every `interval_s`)."""

    def __init__(self, ring: KeyRing, path: str | Path, *, interval_s: float, clock: Clock = monotonic_clock) -> None:
        self.ring = ring
        self.path = Path(path)
        self._file = ChangedFile(self.path, interval_s=interval_s, clock=clock)
        self.reloads = 0
        self.rejected = 0

    def reload_now(self) -> list[str]:
        """Swap the file in when valid; its problems otherwise (the keys in effect stay)."""
        self._file.read()
        try:
            keys = load_keys(self.path)
        except ConfigError as error:
            self.rejected += 1
            problems = [f"{where or '<root>'}: {message}" for where, message in error.problems]
            for problem in problems:
                log.error("keys file %s rejected, the keys in effect stay: %s", self.path, problem)
            return problems
        self.ring.swap(keys)
        self.reloads += 1
        log.info("keys file %s reloaded: %d keys", self.path, len(keys.keys))
        return []

    def poll(self) -> list[str] | None:
        """Reload if the interval has passed and the file changed; None when nothing was done."""
        return self.reload_now() if self._file.changed() else None
