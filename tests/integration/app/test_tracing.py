"""Tracing and access logs through the real gateway (bare ASGI app, emulated vLLM, the official openai client).

With the SDK's in-memory exporter: a streamed miss and a cached hit make the spans of each stage, nested
under the request's server span, with their attributes; the `traceparent` the instance receives is the
upstream client span's; a caller's own `traceparent` is continued; no attribute and no log line holds the
prompt or the key. With the standard OTEL_* variables: spans reach a real OTLP/HTTP receiver, and a
sampling ratio of 0 sends none."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import openai
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from support.gateway import MODEL, emulators, eventually, gateway
from support.otlp import forwarder, otlp_receiver
from support.servers import serve_asgi

from fleetgate.app.api import create_app
from fleetgate.app.compose import Runtime
from fleetgate.app.logs import JsonLines
from fleetgate.app.settings import GatewaySettings
from fleetgate.app.tracing import trace_requests

pytestmark = pytest.mark.integration

SECRET_KEY = "sk-test-9a7c1e0b5d"
PROMPT = "Tell me about the violet walrus of Quetzaltenango"
POLICY = """
version: 1
topic: {default_category: general}
categories:
  - name: general
    cache: {enabled: true, threshold: 0.95, ttl_s: 3600}
"""
STAGES = ("fleetgate.plan", "fleetgate.cache", "fleetgate.route", "fleetgate.upstream", "fleetgate.stream")


def _leaks(values: object) -> bool:
    text = json.dumps(values, default=str)
    return any(secret in text for secret in (SECRET_KEY, PROMPT, "walrus", "Quetzaltenango"))


async def test_spans_of_a_streamed_miss_and_a_cache_hit_nest_and_name_no_secret(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fleetgate.access")
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    exporter = InMemorySpanExporter()
    async with emulators(1) as (server,), forwarder(server.url) as instance:
        settings = GatewaySettings(worker_urls=[instance.url], model=MODEL, router="round-robin", policy=str(policy),
                                   admission=True, access_log=True, otel_traces_exporter="otlp",
                                   probe_interval_s=0.2)
        runtime = Runtime(settings, span_processor=SimpleSpanProcessor(exporter))
        app = create_app(runtime)
        trace_requests(app, runtime.tracer_provider)
        async with serve_asgi(app) as url:
            client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=SECRET_KEY, max_retries=0, timeout=60)
            messages = [{"role": "user", "content": PROMPT}]
            stream = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, stream=True)
            assert [c async for c in stream]
            hit = await client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, max_tokens=6)
            assert hit.headers["x-fleetgate-cache"] == "hit"
            caller_trace = "0af7651916cd43dd8448eb211c80319c"
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}],
                                                 max_tokens=2,
                                                 extra_headers={"traceparent": f"00-{caller_trace}-b7ad6b7169203331-01"})
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=2)
            await eventually(lambda: sum(s.kind == SpanKind.SERVER for s in exporter.get_finished_spans()) == 4,
                             what="four server spans")

    spans = exporter.get_finished_spans()
    servers = [s for s in spans if s.kind == SpanKind.SERVER]
    miss_trace = servers[0].context.trace_id
    miss = {s.name: s for s in spans if s.context.trace_id == miss_trace}
    root = servers[0]
    assert root.name == "POST /v1/chat/completions" and root.parent is None
    for stage in STAGES:
        assert miss[stage].parent.span_id == root.context.span_id, stage
    assert miss["fleetgate.admission"].parent.span_id == miss["fleetgate.route"].context.span_id
    assert miss["fleetgate.plan"].attributes["fleetgate.rule"] and miss["fleetgate.plan"].attributes["fleetgate.category"] == "general"
    assert miss["fleetgate.cache"].attributes["fleetgate.cache"] == "miss"
    route = miss["fleetgate.route"].attributes
    assert route["fleetgate.pool"] == "default" and route["fleetgate.instance"] == "default-0" and route["fleetgate.route"]
    assert route["fleetgate.estimated_ttft_ms"] > 0  # DualMap, the policy's default router, estimates
    assert miss["fleetgate.stream"].attributes["gen_ai.usage.output_tokens"] == 6
    assert root.attributes["gen_ai.usage.output_tokens"] == 6 and root.attributes["fleetgate.ttft_ms"] > 0

    client_span = next(s for s in spans if s.kind == SpanKind.CLIENT and s.context.trace_id == miss_trace)
    assert client_span.parent.span_id == miss["fleetgate.upstream"].context.span_id
    version, trace_id, parent_id, flags = instance.headers[0]["traceparent"].split("-")
    assert (trace_id, parent_id) == (f"{miss_trace:032x}", f"{client_span.context.span_id:016x}")
    assert int(flags, 16) & 1  # sampled

    hit_trace = servers[1].context.trace_id
    hit_cache = next(s for s in spans if s.context.trace_id == hit_trace and s.name == "fleetgate.cache")
    assert hit_cache.attributes["fleetgate.cache"] == "hit" and hit_cache.attributes["fleetgate.similarity"] == 1.0
    assert not any(s.name == "fleetgate.upstream" and s.context.trace_id == hit_trace for s in spans)
    assert f"{servers[2].context.trace_id:032x}" == caller_trace  # the caller's trace, continued

    assert not _leaks([dict(s.attributes) for s in spans] + [dict(s.resource.attributes) for s in spans])

    lines = [json.loads(JsonLines().format(r)) for r in caplog.records if r.name == "fleetgate.access"]
    assert len(lines) == 4
    first = lines[0]
    assert first["request_id"] == root.attributes["fleetgate.request_id"]
    assert (first["cache"], first["status"], first["completion_tokens"], first["model"]) == ("miss", 200, 6, MODEL)
    assert first["tenant"].startswith("key-") and first["pool"] and first["instance"] and first["ttft_ms"] > 0
    assert lines[1]["route"] == "cache-hit" and lines[3]["status"] == 404 and lines[3]["request_id"]
    assert not _leaks(lines)


async def test_the_standard_otel_variables_send_spans_to_an_otlp_http_receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    async with emulators(1) as servers, otlp_receiver() as receiver:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "fleetgate-under-test")
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "1.0")
        async with gateway([s.url for s in servers]) as url:
            client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=SECRET_KEY, max_retries=0, timeout=60)
            await client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3)
        # leaving the gateway shut its tracer provider down, which exports what was batched
        names = {span.name for span in receiver.all()}
        assert {"POST /v1/completions", "fleetgate.plan", "fleetgate.route", "fleetgate.upstream", "POST"} <= names
        assert {span.service for span in receiver.all()} == {"fleetgate-under-test"}
        assert not _leaks([s.attributes for s in receiver.all()])

        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
        exports = receiver.exports
        async with gateway([s.url for s in servers]) as url:
            client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=SECRET_KEY, max_retries=0, timeout=60)
            await client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3)
        assert receiver.exports == exports  # ratio 0: nothing sampled, nothing sent


async def test_tracing_is_off_by_default_and_builds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    runtime = Runtime(GatewaySettings(worker_urls=["http://127.0.0.1:9"], model=MODEL))
    assert runtime.tracer_provider is None and runtime.gateway.telemetry.tracer is None
    assert not runtime.gateway.telemetry.access_log
