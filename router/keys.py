"""The keys file: clients' API keys (hashed), their tenants, priority classes, limits and models.

    tenants:                  # optional: limits shared by every key of a tenant
      acme: {rpm: 600, tpm: 200000}
    keys:
      - id: 3f9a1c2b7d4e      # public: the key reads fg-3f9a1c2b7d4e-<secret>
        hash: hmac-sha256:<salt hex>:<digest hex>
        tenant: acme
        priority: high        # high, normal or low: the admission queue's order
        rpm: 60               # optional, per key
        tpm: 100000
        models: [llama-3.1-8b]  # empty: every model
        expires: 2027-01-01T00:00:00Z
        revoked: false

Only a salted HMAC-SHA256 of each key is stored. A key's secret is 256 random bits, so nobody can
guess it or search for it, salted or not: the slow password hashes (argon2, bcrypt) exist for
low-entropy passwords, and would cost tens of milliseconds per request. The salt makes the same
digest impossible to precompute across files; `hmac.compare_digest` keeps the comparison constant
in time. The id in the key finds its entry without comparing against every hash.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from fleetgate.core.yamlconf import load_yaml

Priority = Literal["high", "normal", "low"]
KEY_PREFIX = "fg"
_ID_HEX = 12  # 48 bits: unique within any file, and short enough to read out in `keys list`
_HASH = re.compile(r"^hmac-sha256:[0-9a-f]{32}:[0-9a-f]{64}$")
_KEY = re.compile(rf"^{KEY_PREFIX}-(?P<id>[0-9a-f]{{{_ID_HEX}}})-[A-Za-z0-9_-]{{43}}$")


class Limits(BaseModel):
    """Requests and tokens per minute; None: no limit of that kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=rf"^[0-9a-f]{{{_ID_HEX}}}$")
    hash: str = Field(pattern=_HASH.pattern)
    tenant: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    priority: Priority = "normal"
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    models: tuple[str, ...] = ()
    expires: AwareDatetime | None = None
    revoked: bool = False
    created: AwareDatetime | None = None

    def matches(self, key: str) -> bool:
        """Whether `key` is this entry's key (constant time in the digest)."""
        _, salt, digest = self.hash.split(":")
        return hmac.compare_digest(_digest(bytes.fromhex(salt), key), digest)

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and now >= self.expires

    def allows(self, model: str) -> bool:
        return not self.models or model in self.models


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tenants: dict[str, Limits] = {}
    keys: tuple[KeyEntry, ...] = ()

    @model_validator(mode="after")
    def _unique_ids(self) -> "KeysFile":
        ids = [k.id for k in self.keys]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"key ids must be unique; repeated: {', '.join(repeated)}")
        return self

    def by_id(self) -> dict[str, KeyEntry]:
        return {k.id: k for k in self.keys}


def key_id(key: str) -> str | None:
    """The public id inside a well-formed key; None for anything else (never raises, never echoes)."""
    match = _KEY.match(key)
    return match.group("id") if match else None


def _digest(salt: bytes, key: str) -> str:
    return hmac.new(salt, key.encode(), hashlib.sha256).hexdigest()


def new_key(existing: set[str]) -> tuple[str, str, str]:
    """(id, key, stored hash) of a fresh key whose id is not in `existing`."""
    while (ident := secrets.token_hex(_ID_HEX // 2)) in existing:
        pass
    key = f"{KEY_PREFIX}-{ident}-{secrets.token_urlsafe(32)}"
    salt = secrets.token_bytes(16)
    return ident, key, f"hmac-sha256:{salt.hex()}:{_digest(salt, key)}"


def load_keys(path: str | Path) -> KeysFile:
    """The keys file, or ConfigError naming the YAML path of each problem. A missing file is an error
    for the gateway (it would otherwise run open by accident); `keys add` starts one."""
    return load_yaml(path, KeysFile)


def load_or_empty(path: str | Path) -> KeysFile:
    """For `keys add`: a file that does not exist yet is an empty one."""
    return load_keys(path) if Path(path).exists() else KeysFile()


def save_keys(path: str | Path, keys: KeysFile) -> None:
    """Write atomically (a watching gateway never reads half a file), readable by the owner only."""
    target = Path(path)
    text = ("# Fleetgate keys file: hashes only. Manage it with `fleetgate keys add/list/revoke`.\n"
            + yaml.safe_dump(keys.model_dump(mode="json", exclude_defaults=True), sort_keys=False))
    handle, temporary = tempfile.mkstemp(dir=target.parent or Path("."), prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.chmod(temporary, 0o600)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def utc_now() -> datetime:
    return datetime.now(timezone.utc)

