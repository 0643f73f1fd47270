"""`fleetgate keys add|list|revoke`: the last-line contract, and no key or hash ever printed by list."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetgate.app.cli import main
from fleetgate.router.keyring import KeyRing
from fleetgate.router.keys import load_keys


def add(path: Path, capsys: pytest.CaptureFixture[str], *options: str) -> str:
    assert main(["keys", "add", str(path), *options]) == 0
    return capsys.readouterr().out.splitlines()[-1]


def test_add_prints_the_key_alone_on_its_last_line_and_the_gateway_accepts_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.yaml"
    key = add(path, capsys, "--tenant", "acme", "--priority", "high", "--rpm", "60", "--tpm", "1000",
              "--models", "llama,mistral", "--expires", "2099-01-01")
    entry = KeyRing(load_keys(path)).verify({"authorization": f"Bearer {key}"})
    assert (entry.tenant, entry.priority, entry.rpm, entry.tpm, entry.models) == (
        "acme", "high", 60, 1000, ("llama", "mistral"))
    assert entry.expires is not None and entry.expires.year == 2099 and entry.expires.utcoffset().total_seconds() == 0
    assert key not in path.read_text()
    second = add(path, capsys, "--tenant", "beta")
    assert second != key and len(load_keys(path).keys) == 2


def test_list_shows_ids_and_state_but_never_a_key_or_a_hash(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.yaml"
    key = add(path, capsys, "--tenant", "acme")
    stored = load_keys(path).keys[0]
    assert main(["keys", "list", str(path)]) == 0
    out = capsys.readouterr().out
    assert stored.id in out and "acme" in out and "active" in out
    assert key not in out and key.split("-", 2)[2] not in out and stored.hash.split(":")[2] not in out


def test_revoke_marks_the_key_and_the_gateway_refuses_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.yaml"
    add(path, capsys, "--tenant", "acme")
    ident = load_keys(path).keys[0].id
    assert main(["keys", "revoke", str(path), ident]) == 0
    assert load_keys(path).keys[0].revoked
    assert main(["keys", "list", str(path)]) == 0 and "revoked" in capsys.readouterr().out
    assert main(["keys", "revoke", str(path), "000000000000"]) == 1


def test_bad_values_and_bad_files_are_messages_not_tracebacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.yaml"
    assert main(["keys", "add", str(path), "--tenant", "has space"]) == 2
    assert "tenant" in capsys.readouterr().err and not path.exists()
    path.write_text("keys: [{id: x}]\n")
    assert main(["keys", "list", str(path)]) == 2
    assert "keys[0].hash" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["keys", "add", str(path), "--tenant", "a", "--expires", "someday"])


def test_a_keys_file_lets_the_gateway_bind_beyond_loopback_and_the_admin_token_is_a_variable_name() -> None:
    from pydantic import ValidationError

    from fleetgate.app.settings import ServeCommandSettings

    settings = ServeCommandSettings(worker_urls=("http://127.0.0.1:9",), model="m", keys="keys.yaml",
                                    host="0.0.0.0", admin_token_env="FLEETGATE_ADMIN_TOKEN")
    assert settings.host == "0.0.0.0"
    with pytest.raises(ValidationError, match="keys file"):
        ServeCommandSettings(worker_urls=("http://127.0.0.1:9",), model="m", host="0.0.0.0")
    with pytest.raises(ValidationError):
        ServeCommandSettings(worker_urls=("http://127.0.0.1:9",), model="m", admin_token_env="not a name!")
