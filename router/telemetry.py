"""What one request tells the operator: its spans (OpenTelemetry) and its access-log line.

The gateway opens a `RequestTelemetry` per request and reports to it as the request moves: the plan,
the cache lookup, the admission wait, the route, the upstream call up to its first byte, and the
stream to its end. With tracing and access logging both off (or a request not sampled, and no access
log), `Telemetry.begin` hands out one shared object whose every method does nothing, so an untraced
request pays a few method calls.

Only identifiers and figures are recorded: never prompt or completion text, never a key (the tenant
is the key's hash, or the keys file's tenant name).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, ContextManager

from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span, Tracer

from fleetgate.core.request import InferenceRequest
from fleetgate.core.usage import Usage

PLAN, CACHE, ADMISSION, ROUTE, UPSTREAM, STREAM = (
    "fleetgate.plan", "fleetgate.cache", "fleetgate.admission", "fleetgate.route", "fleetgate.upstream",
    "fleetgate.stream")
"""Span names, children of the request's server span (the ASGI instrumentation's)."""

ACCESS_LOGGER = "fleetgate.access"
access_log = logging.getLogger(ACCESS_LOGGER)
_OFF: ContextManager[Span] = contextlib.nullcontext(INVALID_SPAN)


class RequestTelemetry:
    """One request's telemetry when nothing is recorded: every method is a no-op (see `_Recorded`)."""

    __slots__ = ()

    def span(self, _name: str) -> ContextManager[Span]:
        """A child span of the request, current while the block runs (so the upstream HTTP call's own
        span, and the `traceparent` it sends, nest under `UPSTREAM`)."""
        return _OFF

    def note(self, **fields: Any) -> None:
        """Facts for the access-log line, the request span and the span current now (pool, instance,
        route, cache, ...); a later note of the same fact wins (the instance a retry went to)."""

    def first_byte(self, now_s: float) -> None:
        """The upstream's first byte arrived at `now_s` (the gateway's clock): the TTFT the log line reports."""

    def stream_started(self) -> None:
        """The relay of a stream began: the `STREAM` span runs from here to `finish`."""

    def finish(self, status: int, usage: Usage | None = None, error: str | None = None) -> None:
        """The request ended with an answer (its last byte relayed; `error`: how a stream broke off): end
        the stream span with the token counts, and write the access-log line. Errors the client got
        instead of an answer are logged by `Telemetry.refused`."""


NOTHING = RequestTelemetry()


class Telemetry:
    """Per process: the tracer (None: tracing off) and whether each request gets an access-log line."""

    def __init__(self, tracer: Tracer | None = None, *, access_log: bool = False) -> None:
        self.tracer = tracer
        self.access_log = access_log

    def begin(self, request: InferenceRequest) -> RequestTelemetry:
        """The request's telemetry; the shared no-op unless it is logged or its server span is sampled (an
        unsampled request's child spans would not be recorded either: the sampler follows the parent)."""
        if self.access_log or (self.tracer is not None and trace.get_current_span().is_recording()):
            return _Recorded(self, request)
        return NOTHING

    def refused(self, request_id: str, status: int, code: str) -> None:
        """The access-log line of a request that ended in an error (the gateway's own or a backend's)."""
        if self.access_log:
            access_log.info("request", extra={"access": {"request_id": request_id, "status": status, "error": code}})


class _Recorded(RequestTelemetry):
    __slots__ = ("_telemetry", "_request", "_span", "_stream", "_fields", "_ttft_s")

    def __init__(self, telemetry: Telemetry, request: InferenceRequest) -> None:
        self._telemetry = telemetry
        self._request = request
        self._span = trace.get_current_span() if telemetry.tracer is not None else INVALID_SPAN
        self._stream: Span = INVALID_SPAN
        self._fields: dict[str, Any] = {}
        self._ttft_s: float | None = None
        self._span.set_attributes({
            "fleetgate.request_id": request.request_id, "fleetgate.api": request.api,
            "gen_ai.request.model": request.model, "fleetgate.stream": request.stream,
        })

    def span(self, name: str) -> ContextManager[Span]:
        tracer = self._telemetry.tracer
        return _OFF if tracer is None else tracer.start_as_current_span(name)

    def note(self, **fields: Any) -> None:
        self._fields.update(fields)
        if self._telemetry.tracer is not None:
            trace.get_current_span().set_attributes(_attributes(fields))

    def first_byte(self, now_s: float) -> None:
        self._ttft_s = now_s - self._request.arrival_s

    def stream_started(self) -> None:
        tracer = self._telemetry.tracer
        if tracer is not None:  # not made current: a generator may be closed from another context
            self._stream = tracer.start_span(STREAM, context=trace.set_span_in_context(self._span))

    def finish(self, status: int, usage: Usage | None = None, error: str | None = None) -> None:
        tokens = {} if usage is None else {"gen_ai.usage.input_tokens": usage.prompt_tokens,
                                           "gen_ai.usage.output_tokens": usage.completion_tokens}
        figures = _attributes(self._fields)
        if self._ttft_s is not None:
            figures["fleetgate.ttft_ms"] = round(self._ttft_s * 1e3, 3)
        self._stream.set_attributes(tokens)
        self._stream.end()
        self._span.set_attributes({**figures, **tokens})
        if self._telemetry.access_log:
            request = self._request
            line = {"request_id": request.request_id, "tenant": request.tenant, "model": request.model,
                    "api": request.api, "stream": request.stream, **self._fields, "status": status,
                    "ttft_ms": None if self._ttft_s is None else round(self._ttft_s * 1e3, 1),
                    "prompt_tokens": None if usage is None else usage.prompt_tokens,
                    "completion_tokens": None if usage is None else usage.completion_tokens}
            if error is not None:
                line["error"] = error
            access_log.info("request", extra={"access": line})


def _attributes(fields: dict[str, Any]) -> dict[str, Any]:
    return {f"fleetgate.{name}": value for name, value in fields.items() if value is not None}
