"""A small OTLP/HTTP trace receiver on loopback: it decodes what exporters send (protobuf, as the
collector would, with opentelemetry-proto) and keeps every span for the test to inspect.

Also a forwarder that sits in front of an instance and records the headers each request carried,
so a test can see the `traceparent` that reached "vLLM"."""

from __future__ import annotations

import contextlib
import gzip
import threading
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import aiohttp
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from support.servers import serve_aiohttp


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span
    attributes: dict[str, Any]
    service: str


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


@dataclass
class OtlpReceiver:
    """Spans received so far (thread-safe: the receiver may run on another thread's loop)."""

    url: str = ""
    spans: list[ReceivedSpan] = field(default_factory=list)
    exports: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def named(self, name: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.name == name]

    def all(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        received = []
        for resource_spans in export.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(ReceivedSpan(
                        span.name, span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(),
                        {a.key: _value(a.value) for a in span.attributes}, str(resource.get("service.name"))))
        with self._lock:
            self.spans.extend(received)
            self.exports += 1
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")


@contextlib.asynccontextmanager
async def otlp_receiver() -> AsyncIterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    app = web.Application()
    app.router.add_post("/v1/traces", receiver._traces)
    async with serve_aiohttp(app) as url:
        receiver.url = url
        yield receiver


@dataclass
class Forwarder:
    """Passes requests to `target` unchanged and keeps the headers of each POST."""

    target: str
    url: str = ""
    headers: list[dict[str, str]] = field(default_factory=list)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
        passed = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with aiohttp.ClientSession(auto_decompress=False) as session, session.request(
                request.method, self.target + request.path_qs, data=await request.read(), headers=passed) as answer:
            response = web.StreamResponse(status=answer.status, headers={
                k: v for k, v in answer.headers.items() if k.lower() in ("content-type", "content-encoding")})
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


@contextlib.asynccontextmanager
async def forwarder(target: str) -> AsyncIterator[Forwarder]:
    forwarding = Forwarder(target)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forwarding._forward)
    async with serve_aiohttp(app) as url:
        forwarding.url = url
        yield forwarding
