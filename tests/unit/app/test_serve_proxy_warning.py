"""`fleetgate serve` on Ray's Python proxy says so on stderr, with why, what it costs and how to fix it."""

from __future__ import annotations

import os
import shutil

import pytest

from fleetgate.app.cli import main
from fleetgate.app.commands import serve as serve_command

QUICK = ["--worker-urls", "http://127.0.0.1:9", "--model", "m"]


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Ray Serve's start replaced by one that reports the proxy the test chooses (appended to the list)."""
    from fleetgate.app import serve as app_serve

    proxy: list[bool] = []
    monkeypatch.setattr(app_serve, "start_local", lambda *args, **options: proxy[-1])
    monkeypatch.setattr(app_serve, "stop_local", lambda: None)
    monkeypatch.setattr(serve_command, "_wait_for_ctrl_c", lambda: None)
    return proxy


def test_the_python_proxy_fallback_is_loud_about_its_cost(started: list[bool], monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    started.append(False)
    assert main(["serve", *QUICK]) == 0
    out = capsys.readouterr()
    assert "(Python proxy)" in out.out
    assert out.err.startswith("WARNING: Ray Serve is using its Python proxy, because `haproxy` is not on PATH")
    assert serve_command.PYTHON_PROXY_COST in out.err and "apt-get install haproxy" in out.err


def test_haproxy_turned_off_is_named_as_the_reason(started: list[bool], monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/sbin/haproxy")
    started.append(False)
    assert main(["serve", *QUICK]) == 0
    assert "because RAY_SERVE_ENABLE_HA_PROXY=0 turned HAProxy off" in capsys.readouterr().err


def test_haproxy_mode_starts_quietly(started: list[bool], capsys: pytest.CaptureFixture[str]) -> None:
    started.append(True)
    assert main(["serve", *QUICK]) == 0
    out = capsys.readouterr()
    assert "(HAProxy proxy)" in out.out and "WARNING" not in out.err


def test_both_proxies_run_in_ray_throughput_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the Python proxy too (gRPC to replicas): without it the fallback lost a quarter of long streamed
    requests at 27 requests/s (docs/scale-out.md). Direct ingress stays off there, as measured."""
    from fleetgate.app.serve import haproxy_mode

    for variable in ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_DIRECT_INGRESS",
                     "RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert haproxy_mode() is False
    assert (os.environ["RAY_SERVE_ENABLE_HA_PROXY"], os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"],
            os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"]) == ("0", "1", "0")
    for variable in ("RAY_SERVE_ENABLE_DIRECT_INGRESS", "RAY_SERVE_ENABLE_HA_PROXY"):  # what the first call wrote
        monkeypatch.delenv(variable)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/sbin/haproxy")
    assert haproxy_mode() is True
    assert (os.environ["RAY_SERVE_ENABLE_HA_PROXY"], os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"]) == ("1", "1")
    assert "RAY_SERVE_ENABLE_DIRECT_INGRESS" not in os.environ  # Ray turns it on itself with HAProxy
