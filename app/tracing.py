"""Tracing setup: settings and the standard `OTEL_*` variables -> one OpenTelemetry tracer provider.

Off unless the exporter is `otlp` (setting `otel_traces_exporter`, else `OTEL_TRACES_EXPORTER`). When
off nothing is built: no provider, no ASGI middleware, no aiohttp hooks, so an untraced gateway runs
exactly the code it ran before tracing existed. When on, spans go over OTLP/HTTP in batches to the
collector (`otel_exporter_otlp_endpoint`, else `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`), sampled at
`otel_sample_ratio` (else `OTEL_TRACES_SAMPLER_ARG`, else 1.0) unless the caller's `traceparent` has
already decided. The provider is the gateway's own, never the process-global one, so two gateways
in one process (tests) do not share a pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import aiohttp
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

from fleetgate.app.settings import GatewaySettings

DEFAULT_SERVICE_NAME = "fleetgate"
TRACES_PATH = "/v1/traces"
UNTRACED_PATHS = "/health,/metrics"  # probes and scrapes: one span per scrape would drown the requests


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """Tracing as resolved from the settings and the environment (None: tracing is off)."""

    endpoint: str | None  # the full traces URL; None: the exporter reads OTEL_EXPORTER_OTLP_* itself
    sample_ratio: float
    service_name: str


def tracing_config(settings: GatewaySettings, environ: Mapping[str, str]) -> TracingConfig | None:
    exporter = settings.otel_traces_exporter or environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if exporter == "none":
        return None
    if exporter != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={exporter!r}: Fleetgate exports traces with 'otlp' (OTLP over "
                         "HTTP) or not at all ('none')")
    ratio = settings.otel_sample_ratio
    if ratio is None:
        raw = environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0")
        try:
            ratio = float(raw)
        except ValueError:
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={raw!r} is not a ratio between 0 and 1") from None
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"the trace sampling ratio must be between 0 and 1, not {ratio}")
    base = settings.otel_exporter_otlp_endpoint
    return TracingConfig(
        endpoint=None if base is None else base.rstrip("/") + TRACES_PATH,
        sample_ratio=ratio,
        service_name=settings.otel_service_name or environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME,
    )


def tracer_provider(config: TracingConfig, processor: SpanProcessor | None = None) -> TracerProvider:
    """The provider `config` describes; `processor` replaces the OTLP batch exporter (tests: in memory)."""
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: config.service_name}),
                              sampler=ParentBasedTraceIdRatio(config.sample_ratio))
    if processor is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=config.endpoint))
    provider.add_span_processor(processor)
    return provider


def trace_requests(app: Any, provider: TracerProvider) -> None:
    """Put the ASGI instrumentation around the Starlette `app`: one server span per request (its
    `traceparent` honoured), without the per-message send/receive spans a stream would multiply."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    app.add_middleware(OpenTelemetryMiddleware, excluded_urls=UNTRACED_PATHS, tracer_provider=provider,
                       exclude_spans=["receive", "send"])


def upstream_trace_config(provider: TracerProvider) -> aiohttp.TraceConfig:
    """The aiohttp-client instrumentation for the upstream session: a client span per call to an
    instance, whose context goes to vLLM as `traceparent`."""
    from opentelemetry.instrumentation.aiohttp_client import create_trace_config

    return create_trace_config(tracer_provider=provider)
