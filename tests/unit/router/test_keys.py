"""The keys file: format, verification (unknown, tampered, revoked, expired), models, hot reload."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from fleetgate.core.errors import AuthenticationError, PermissionDeniedError
from fleetgate.core.yamlconf import ConfigError
from fleetgate.router.keyring import KeyRing, KeysWatcher, bearer
from fleetgate.router.keys import KeyEntry, KeysFile, key_id, load_keys, new_key, save_keys

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


def entry(tenant: str = "acme", **fields: object) -> tuple[KeyEntry, str]:
    ident, key, stored = new_key(set())
    return KeyEntry(id=ident, hash=stored, tenant=tenant, **fields), key


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_a_new_key_is_256_random_bits_behind_a_public_id_and_only_its_salted_hash_is_kept() -> None:
    first, key, _ = new_key(set())
    assert key.startswith(f"fg-{first}-") and len(key.split("-", 2)[2]) == 43 and key_id(key) == first
    other_id, other_key, other_hash = new_key({first})
    assert other_id != first and key not in other_hash and other_key.split("-", 2)[2] not in other_hash
    entry_, _ = entry()
    assert entry_.matches(key) is False  # another key's secret under another salt


def test_verify_accepts_the_key_and_refuses_missing_unknown_tampered_revoked_and_expired() -> None:
    good, key = entry(priority="high")
    revoked, revoked_key = entry(revoked=True)
    expired, expired_key = entry(expires=NOW - timedelta(seconds=1))
    ring = KeyRing(KeysFile(keys=(good, revoked, expired)), now=lambda: NOW)
    assert ring.verify(auth(key)) == good
    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")
    unknown = new_key(set())[1]
    for headers in ({}, {"authorization": "Basic abc"}, auth("sk-whatever"), auth(tampered), auth(unknown),
                    auth(revoked_key), auth(expired_key)):
        with pytest.raises(AuthenticationError) as error:
            ring.verify(headers)
        assert error.value.status == 401 and error.value.code == "invalid_api_key"
        assert key not in error.value.message and tampered not in error.value.message


def test_a_key_limited_to_models_gets_403_for_another_and_sees_only_its_own() -> None:
    limited, _ = entry(models=("llama",))
    ring = KeyRing(KeysFile(keys=(limited,)))
    ring.authorize(limited, "llama")
    with pytest.raises(PermissionDeniedError) as error:
        ring.authorize(limited, "mistral")
    assert error.value.status == 403
    assert limited.allows("llama") and not limited.allows("mistral")


def test_bearer_reads_only_a_bearer_token() -> None:
    assert bearer({"authorization": "Bearer  abc "}) == "abc"
    assert bearer({"authorization": "bearer abc"}) == "abc"
    assert bearer({"authorization": "Basic abc"}) == "" and bearer({}) == ""


def test_an_invalid_file_names_the_yaml_path_of_each_problem(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("keys:\n  - id: 1234\n    tenant: acme\n    priority: urgent\n    color: red\n")
    with pytest.raises(ConfigError) as error:
        load_keys(path)
    where = {problem_path for problem_path, _ in error.value.problems}
    assert {"keys[0].id", "keys[0].hash", "keys[0].priority", "keys[0].color"} <= where


def test_the_file_round_trips_and_duplicate_ids_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    one, _ = entry(rpm=5, tpm=100, models=("llama",), expires=NOW)
    keys = KeysFile(tenants={"acme": {"rpm": 10}}, keys=(one,))
    save_keys(path, keys)
    assert load_keys(path) == keys and path.stat().st_mode & 0o077 == 0
    path.write_text(path.read_text() + path.read_text().split("keys:\n", 1)[1])
    with pytest.raises(ConfigError, match="unique"):
        load_keys(path)


def test_a_changed_file_is_swapped_in_and_a_bad_one_keeps_the_keys_in_effect(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    first, first_key = entry()
    save_keys(path, KeysFile(keys=(first,)))
    clock = [0.0]
    ring = KeyRing(load_keys(path))
    watcher = KeysWatcher(ring, path, interval_s=1.0, clock=lambda: clock[0])
    second, second_key = entry("beta")
    save_keys(path, KeysFile(keys=(first.model_copy(update={"revoked": True}), second)))
    assert watcher.poll() is None  # the interval has not passed
    clock[0] = 1.0
    assert watcher.poll() == []
    assert ring.verify(auth(second_key)).tenant == "beta"
    with pytest.raises(AuthenticationError):
        ring.verify(auth(first_key))
    path.write_text("keys:\n  - tenant: [oops\n")
    clock[0] = 2.0
    problems = watcher.poll()
    assert problems and watcher.rejected == 1
    assert ring.verify(auth(second_key)).tenant == "beta"  # still served
