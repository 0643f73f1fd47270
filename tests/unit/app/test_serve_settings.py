"""`fleetgate serve`'s settings: generated flags, the environment, --config files, and their order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from support.cli_tree import subcommands

from fleetgate.app.cli import build_parser, main
from fleetgate.app.commands.serve import command_settings, flag
from fleetgate.app.settings import (
    GatewaySettings,
    ServeCommandSettings,
    ServeSettings,
    read_config,
)

ROOT = Path(__file__).resolve().parents[3]
SERVE_YAML = ROOT / "deploy" / "serve.yaml"
QUICK = ["--worker-urls", "http://127.0.0.1:9", "--model", "m"]


def settings(argv: list[str], environ: dict[str, str] | None = None) -> ServeCommandSettings:
    return command_settings(build_parser().parse_args(["serve", *argv]), environ or {})


def write(tmp_path: Path, document: dict[str, Any]) -> str:
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(document))
    return str(path)


def test_every_setting_has_a_described_flag() -> None:
    options = dict(subcommands(build_parser()))[("serve",)]._option_string_actions
    for name, field in ServeCommandSettings.model_fields.items():
        assert field.description, name
        assert options[flag(name)].dest == name
        assert field.description in " ".join(options[flag(name)].help.split())


def test_flags_override_environment_over_config_over_defaults(tmp_path: Path) -> None:
    config = write(tmp_path, {"worker_urls": ["http://127.0.0.1:9"], "model": "m", "router": "round-robin",
                              "policy_poll_s": 5, "max_attempts": 2})
    environ = {"FLEETGATE_POLICY_POLL_S": "3", "FLEETGATE_MAX_ATTEMPTS": "4"}
    resolved = settings(["--config", config, "--max-attempts", "5"], environ)
    assert (resolved.router, resolved.policy_poll_s, resolved.max_attempts) == ("round-robin", 3.0, 5)
    assert resolved.probe_interval_s == GatewaySettings.model_fields["probe_interval_s"].default


def test_typed_flags_and_variables() -> None:
    resolved = settings([*QUICK, "--no-semantic-cache", "--ttft-slo-ms", "800", "--replicas", "3"],
                        {"FLEETGATE_ALLOW_OPEN": "true", "FLEETGATE_HOST": "0.0.0.0"})
    assert (resolved.semantic_cache, resolved.ttft_slo_ms, resolved.num_replicas) == (False, 800.0, 3)
    assert (resolved.allow_open, resolved.host) == (True, "0.0.0.0")
    from_env = settings(["--model", "m"], {"FLEETGATE_WORKER_URLS": "http://a:1 http://b:2"})
    assert from_env.worker_urls == ("http://a:1", "http://b:2")


def test_a_fleet_from_a_higher_source_replaces_the_lower_one(tmp_path: Path) -> None:
    config = write(tmp_path, {"fleet": "deploy/fleet.example.yaml"})
    resolved = settings(["--config", config, *QUICK])
    assert (resolved.fleet, resolved.worker_urls) == (None, ("http://127.0.0.1:9",))
    assert settings(["--config", config]).fleet == "deploy/fleet.example.yaml"


def test_ray_serve_config_gives_its_first_applications_args_and_http_options(tmp_path: Path) -> None:
    config = write(tmp_path, {"http_options": {"host": "127.0.0.2", "port": 9100, "request_timeout_s": 5},
                              "applications": [{"name": "fleetgate", "args": {
                                  "router": "session", "worker_urls": ["http://127.0.0.1:9"], "model": "m"}}]})
    resolved = settings(["--config", config])
    assert (resolved.host, resolved.port, resolved.router) == ("127.0.0.2", 9100, "session")


def test_deploy_serve_yaml_matches_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # its fleet path is relative to the repository root, as for `serve run`
    resolved = settings(["--config", "deploy/serve.yaml"])
    assert (resolved.fleet, resolved.router, resolved.num_replicas) == ("deploy/fleet.example.yaml", "dualmap", 2)
    assert (resolved.host, resolved.port) == ("127.0.0.1", 8000)
    assert resolved.fleet_config().pools
    ServeSettings(**yaml.safe_load(SERVE_YAML.read_text())["applications"][0]["args"])  # what `serve run` builds


def test_a_plain_mapping_is_returned_as_is(tmp_path: Path) -> None:
    assert read_config(write(tmp_path, {"router": "session", "port": 1234})) == {"router": "session", "port": 1234}


@pytest.mark.parametrize(("argv", "environ", "named"), [
    (["--max-attempts", "0"], {}, "max_attempts (--max-attempts, FLEETGATE_MAX_ATTEMPTS)"),
    ([], {"FLEETGATE_PORT": "eighty"}, "port (--port, FLEETGATE_PORT)"),
    (["--router", "fastest"], {}, "unknown router 'fastest'"),
])
def test_invalid_settings_name_the_setting_and_exit_2(argv: list[str], environ: dict[str, str], named: str,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", *QUICK, *argv]) == 2
    assert named in capsys.readouterr().err


def test_config_problems_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--config", write(tmp_path, {"nonsense": 1, "fleet": "f.yaml"})]) == 2
    assert "nonsense" in capsys.readouterr().err
    assert main(["serve", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["serve", "--fleet", str(tmp_path / "missing-fleet.yaml")]) == 2
    assert "missing-fleet.yaml" in capsys.readouterr().err


def test_an_open_host_is_refused_without_allow_open(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", *QUICK, "--bare", "--host", "0.0.0.0"]) == 2
    message = " ".join(capsys.readouterr().err.split())
    assert "host (--host, FLEETGATE_HOST): '0.0.0.0' is not a loopback address" in message
    assert "no client authentication" in message and "--allow-open" in message


def test_allow_open_host_reaches_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    calls: list[uvicorn.Config] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda server, sockets=None: calls.append(server.config))
    assert main(["serve", *QUICK, "--bare", "--host", "0.0.0.0", "--allow-open", "--port", "8123"]) == 0
    assert [(c.host, c.port) for c in calls] == [("0.0.0.0", 8123)]


def test_allow_open_host_reaches_ray_serve_http_options(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from fleetgate.app import serve as app_serve
    from fleetgate.app.commands import serve as serve_command

    started: list[dict[str, Any]] = []
    deployed: list[str] = []
    monkeypatch.setattr(app_serve, "haproxy_mode", lambda prefer: False)
    monkeypatch.setattr(ray, "init", lambda **options: None)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(app_serve.serve, "start", lambda http_options: started.append(http_options))
    monkeypatch.setattr(app_serve.serve, "run", lambda app, name, **options: deployed.append(name))
    monkeypatch.setattr(serve_command, "_wait_for_ctrl_c", lambda: None)

    assert main(["serve", *QUICK, "--host", "0.0.0.0", "--allow-open", "--port", "8124"]) == 0
    assert started == [{"host": "0.0.0.0", "port": 8124}]
    assert deployed == ["fleetgate"]


def test_a_ray_serve_config_without_applications_args_is_refused(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--config", write(tmp_path, {"applications": [{"args": "fleet.yaml"}]})]) == 2
    assert "applications[0].args" in capsys.readouterr().err
