"""Usage from every backend, without the client noticing: ask for it upstream, strip it on the way back.

`ask_for_usage` makes a streaming body carry `stream_options.include_usage` when the client did
not ask for it. `UsageRelay` then passes the SSE bytes through unparsed, except the few events
that can differ with include_usage on, so the client gets exactly the bytes vLLM (0.32) would
have sent it without include_usage. With it on, vLLM changes two things (chat and completions):
  - it adds a last usage-only event (`"choices":[]` with `usage`) before `[DONE]`; and
  - it moves `system_fingerprint` from each finish event (one with a `finish_reason` string)
    onto that usage event.
So a relay that strips holds a finish event back until the usage event arrives, puts the
fingerprint back on it, and drops the usage event. Events are found by byte search: in compact
JSON `"usage"` and `"finish_reason":"` can only be keys (a quote inside a string value is
escaped), so only those events are parsed. Non-final events carry no usage unless the client
asked for `continuous_usage_stats`, which the rewrite removes when the client did not want usage.
Limits: with n > 1, every event after the first finish event waits for the usage event; a backend
started with --enable-force-include-usage sends usage on every event, which is left in place.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import orjson

from fleetgate.core.request import ApiKind, InferenceRequest
from fleetgate.core.usage import Usage
from fleetgate.router.anthropic import usage_of_event, usage_of_message

_USAGE = b'"usage"'
_FINISHED = b'"finish_reason":"'
_END = b"\n\n"
_JSON_EVENT = b"data: {"
_ASK = b',"stream_options":{"include_usage":true}'


def ask_for_usage(request: InferenceRequest, raw_body: bytes) -> tuple[bytes, bool]:
    """(the body to send upstream, whether the relay must strip the usage the client did not ask for).

    Only streams need it (a non-streamed body always has usage, and vLLM refuses stream_options
    without stream). Without `stream_options` the key is spliced in before the closing brace, the
    client's bytes otherwise kept (4 us for a 32k-token body); with `include_usage` false or an
    options object without it, the body is re-encoded with the options merged. A value other than
    true/false/absent is left for the backend to judge, unchanged. Anthropic messages streams always
    carry their usage (message_delta), and so do responses streams (response.completed)."""
    if not request.stream or request.api not in ("chat", "completions"):
        return raw_body, False
    body = request.body
    if "stream_options" not in body:
        end = raw_body.rfind(b"}")  # the body parsed as a non-empty object: this is its closing brace
        view = memoryview(raw_body)
        return b"".join((view[:end], _ASK, view[end:])), True
    options = body["stream_options"]
    if options is None or (isinstance(options, dict) and options.get("include_usage", False) is False):
        merged = {k: v for k, v in (options or {}).items() if k != "continuous_usage_stats"}
        merged["include_usage"] = True
        return orjson.dumps({**body, "stream_options": merged}), True
    return raw_body, False


def usage_from_body(body: bytes, api: ApiKind = "chat") -> Usage | None:
    """The usage of a whole (non-streamed) answer; None when it has none or does not parse."""
    if api == "messages":
        return usage_of_message(body)
    try:
        data = orjson.loads(body)
        if api == "responses":
            return Usage.from_responses(data.get("usage"))
        if api == "embeddings":  # prompt tokens only: an embedding generates none
            return Usage.from_openai({"completion_tokens": 0, **(data.get("usage") or {})})
        return Usage.from_openai(data.get("usage"))
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return None


class UsageRelay:
    """One stream's SSE bytes in, the client's bytes out; remembers the last usage reported.

    `feed` returns what may go to the client now (possibly nothing: a partial event, or a finish
    event held for its fingerprint); `flush` returns what is left when the stream ends or breaks.
    A chunk that ends on an event boundary and holds neither key goes through as it came."""

    __slots__ = ("_strip", "_read_usage", "_tail", "_held", "usage", "events")

    def __init__(self, *, strip: bool, api: ApiKind = "chat") -> None:
        self._strip = strip
        self._read_usage: Callable[[Mapping[str, Any]], Usage | None] = (
            usage_of_event if api == "messages" else _completed_usage if api == "responses"
            else lambda payload: Usage.from_openai(payload.get("usage")))
        self._tail = b""  # an unfinished event
        self._held: list[bytes] = []  # events from the first finish event on, waiting for the usage event
        self.usage: Usage | None = None
        self.events = 0  # JSON events seen (not [DONE]): what is known of the completion when no usage comes

    def feed(self, chunk: bytes) -> bytes:
        if (not self._tail and not self._held and chunk.endswith(_END) and _USAGE not in chunk
                and not (self._strip and _FINISHED in chunk)):
            self.events += chunk.count(_JSON_EVENT)
            return chunk
        data = self._tail + chunk
        cut = data.rfind(_END)
        if cut < 0:
            self._tail = data
            return b""
        self._tail = data[cut + 2:]
        self.events += data.count(_JSON_EVENT, 0, cut)
        return b"".join(self._event(event + _END) for event in data[:cut].split(_END))

    def flush(self) -> bytes:
        rest = b"".join(self._held) + self._tail
        self._held, self._tail = [], b""
        return rest

    def _event(self, event: bytes) -> bytes:
        if _USAGE in event:
            payload = _payload(event)
            usage = self._read_usage(payload) if payload is not None else None
            if usage is not None:
                self.usage = usage
                if self._strip and payload is not None and payload.get("choices") == []:
                    return self._release(payload.get("system_fingerprint"))
        if self._strip and (self._held or _FINISHED in event):
            self._held.append(event)
            return b""
        return event

    def _release(self, fingerprint: Any) -> bytes:
        """The held events, their finish events stamped with the fingerprint as vLLM does without usage."""
        held, self._held = self._held, []
        if not isinstance(fingerprint, str):
            return b"".join(held)
        stamp = b',"system_fingerprint":' + orjson.dumps(fingerprint) + b"}"
        return b"".join(_stamped(event, stamp) if _FINISHED in event else event for event in held)


def _completed_usage(payload: Mapping[str, Any]) -> Usage | None:
    """A responses stream reports its usage on the last event, `response.completed`."""
    response = payload.get("response")
    return Usage.from_responses(response.get("usage")) if isinstance(response, Mapping) else None


def _payload(event: bytes) -> dict[str, Any] | None:
    """The JSON object of one `data:` event, or None (comments, `[DONE]`, anything else)."""
    start = event.find(b"data:")
    if start < 0:
        return None
    try:
        value = orjson.loads(event[start + 5:])
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _stamped(event: bytes, stamp: bytes) -> bytes:
    """`event` with `stamp` (`,"key":value}`) replacing its object's closing brace: the fingerprint
    is the last field vLLM writes on a finish event."""
    end = event.rfind(b"}")
    return event[:end] + stamp + event[end + 1:] if end >= 0 else event
