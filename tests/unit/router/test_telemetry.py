"""router/telemetry.py: nothing at all when off; with the SDK's in-memory exporter, notes land on the span
current when noted and on the request span, and the stream span carries the token counts."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fleetgate.app.logs import configure_logging
from fleetgate.core.request import InferenceRequest
from fleetgate.core.usage import Usage
from fleetgate.router.telemetry import NOTHING, PLAN, ROUTE, STREAM, Telemetry


def _request() -> InferenceRequest:
    from fleetgate.router.ingress import parse_inference_request

    return parse_inference_request(b'{"model": "m", "messages": [{"role": "user", "content": "secret words"}]}',
                                   "chat", request_id="req-1", arrival_s=10.0, headers={})


def test_off_hands_out_the_shared_no_op() -> None:
    record = Telemetry().begin(_request())
    assert record is NOTHING
    with record.span(PLAN) as span:
        assert not span.is_recording()
    record.note(pool="p")
    record.finish(200, Usage(1, 2, 0))


def test_spans_and_the_access_line(caplog: pytest.LogCaptureFixture) -> None:
    configure_logging("INFO", "text")  # as the gateway does (and enabled again, should a library have disabled it)
    caplog.set_level(logging.INFO, logger="fleetgate.access")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("request") as root:
        record = Telemetry(tracer, access_log=True).begin(_request())
        with record.span(PLAN):
            record.note(rule="r", category="c")
        with record.span(ROUTE):
            record.note(pool="p", instance="i", route="affinity", estimated_ttft_ms=None)
        record.first_byte(10.25)
        record.stream_started()
        record.finish(200, Usage(7, 3, 0))
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert dict(spans[PLAN].attributes) == {"fleetgate.rule": "r", "fleetgate.category": "c"}
    assert "fleetgate.estimated_ttft_ms" not in spans[ROUTE].attributes  # None is left out
    assert spans[STREAM].attributes["gen_ai.usage.output_tokens"] == 3
    assert all(s.parent.span_id == root.get_span_context().span_id for s in spans.values() if s.name != "request")
    assert spans["request"].attributes["fleetgate.ttft_ms"] == 250.0
    assert spans["request"].attributes["fleetgate.instance"] == "i"
    (line,) = [r.access for r in caplog.records]
    assert (line["request_id"], line["pool"], line["status"], line["ttft_ms"], line["completion_tokens"]) == (
        "req-1", "p", 200, 250.0, 3)
    assert "secret" not in repr(line) + repr([dict(s.attributes) for s in spans.values()])


def test_an_unsampled_request_without_access_log_records_nothing() -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    assert Telemetry(tracer).begin(_request()) is NOTHING  # no server span: nothing sampled
    with tracer.start_as_current_span("request"):
        assert Telemetry(tracer).begin(_request()) is not NOTHING
