"""The dashboard JSON is what its generator makes; tracing settings resolve from settings and the OTEL_*
variables; JSON log lines carry the access fields and the request id of an error."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from fleetgate.app.cli import main
from fleetgate.app.dashboard import PANELS, dashboard
from fleetgate.app.logs import JsonLines
from fleetgate.app.settings import GatewaySettings
from fleetgate.app.tracing import tracing_config

DASHBOARD = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "fleetgate.json"
BASE = {"worker_urls": ["http://127.0.0.1:9"], "model": "m"}


def test_the_committed_dashboard_is_the_generated_one(tmp_path: Path) -> None:
    out = tmp_path / "dashboard.json"
    assert main(["observe", "dashboard", "--out", str(out)]) == 0
    assert out.read_text() == DASHBOARD.read_text(), "run: fleetgate observe dashboard --out deploy/grafana/fleetgate.json"
    panels = json.loads(out.read_text())["panels"]
    assert [p["title"] for p in panels] == [p.title for p in PANELS]
    assert all(t["expr"] and t["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in panels for t in p["targets"])
    assert dashboard()["__inputs"][0]["pluginId"] == "prometheus"


def test_tracing_is_off_unless_the_exporter_is_otlp() -> None:
    assert tracing_config(GatewaySettings(**BASE), {}) is None
    assert tracing_config(GatewaySettings(**BASE), {"OTEL_TRACES_EXPORTER": "none"}) is None
    assert tracing_config(GatewaySettings(**BASE, otel_traces_exporter="none"), {"OTEL_TRACES_EXPORTER": "otlp"}) is None


def test_the_standard_variables_configure_it_and_settings_win() -> None:
    environ = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER_ARG": "0.25", "OTEL_SERVICE_NAME": "edge"}
    config = tracing_config(GatewaySettings(**BASE), environ)
    assert config is not None and (config.endpoint, config.sample_ratio, config.service_name) == (None, 0.25, "edge")
    config = tracing_config(GatewaySettings(**BASE, otel_exporter_otlp_endpoint="http://127.0.0.1:4318/",
                                            otel_sample_ratio=0.01, otel_service_name="gw"), environ)
    assert config is not None
    assert (config.endpoint, config.sample_ratio, config.service_name) == ("http://127.0.0.1:4318/v1/traces", 0.01, "gw")
    assert tracing_config(GatewaySettings(**BASE, otel_traces_exporter="otlp"), {}).sample_ratio == 1.0


@pytest.mark.parametrize("environ, message", [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "'otlp'"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER_ARG": "half"}, "not a ratio"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER_ARG": "2"}, "between 0 and 1"),
])
def test_bad_tracing_variables_stop_the_start_with_a_reason(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tracing_config(GatewaySettings(**BASE), environ)


def test_json_lines_carry_the_access_fields_and_an_errors_request_id() -> None:
    access = logging.LogRecord("fleetgate.access", logging.INFO, __file__, 1, "request", None, None)
    access.access = {"request_id": "r1", "status": 200, "ttft_ms": 12.5}
    line = json.loads(JsonLines().format(access))
    assert (line["level"], line["logger"], line["request_id"], line["status"], line["ttft_ms"]) == (
        "info", "fleetgate.access", "r1", 200, 12.5)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        error = logging.LogRecord("fleetgate.api", logging.ERROR, __file__, 1, "unexpected error serving %s", ("r2",),
                                  sys.exc_info())
    error.request_id = "r2"
    line = json.loads(JsonLines().format(error))
    assert line["request_id"] == "r2" and "RuntimeError: boom" in line["error"] and line["level"] == "error"


def test_an_error_logged_while_serving_a_request_carries_its_id(capsys: pytest.CaptureFixture[str]) -> None:
    from fleetgate.app.logs import configure_logging, current_request_id

    configure_logging("INFO", "json")
    token = current_request_id.set("req-42")
    try:
        try:
            raise ValueError("broken")
        except ValueError:
            logging.getLogger("fleetgate.gateway").exception("usage listener failed")
    finally:
        current_request_id.reset(token)
        configure_logging("INFO", "text")
    (line,) = [json.loads(text) for text in capsys.readouterr().err.splitlines() if text.startswith("{")]
    assert (line["request_id"], line["level"], line["message"]) == ("req-42", "error", "usage listener failed")
    assert "ValueError: broken" in line["error"]
