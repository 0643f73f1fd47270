"""The gateway's side of Anthropic's Messages API (`/v1/messages`): its error shape, and its usage and
answer text read from vLLM's replies (a cache hit is replayed in its shapes by cache_replay.py).

Requests are parsed by ingress.py (translated to chat by core/anthropic.py for routing, the
cache and classification); the body itself goes to vLLM's own `/v1/messages` unchanged.
"""

from __future__ import annotations

from typing import Any, Mapping

import orjson

from fleetgate.core.anthropic import FINISH_REASONS, sse_event
from fleetgate.core.errors import GatewayError
from fleetgate.core.usage import Usage

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error"}


def error_body(error: GatewayError) -> dict[str, Any]:
    """`{"type": "error", "error": {"type", "message"}}` with Anthropic's type for the status."""
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(error.status, "api_error"), "message": error.message}}


def sse_error(error: GatewayError) -> bytes:
    """A stream that broke after its first byte ends with Anthropic's `error` event."""
    return sse_event(error_body(error))


def usage_of_event(payload: Mapping[str, Any]) -> Usage | None:
    """The usage a stream event reports: message_delta carries the final counts."""
    return Usage.from_anthropic(payload.get("usage")) if payload.get("type") == "message_delta" else None


def usage_of_message(body: bytes) -> Usage | None:
    try:
        return Usage.from_anthropic(orjson.loads(body).get("usage"))
    except (orjson.JSONDecodeError, AttributeError):
        return None


def completion_of_message(body: bytes) -> tuple[str, str] | None:
    """(text, finish_reason) of a whole text-only message, else None (not cacheable). The reason is
    OpenAI's (end_turn -> stop), as the cache keeps and judges it."""
    try:
        data = orjson.loads(body)
        blocks, stop = data["content"], data.get("stop_reason")
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if stop not in FINISH_REASONS or not all(isinstance(b, dict) and b.get("type") == "text" for b in blocks):
        return None
    return "".join(b.get("text", "") for b in blocks), FINISH_REASONS[stop]


def completion_of_stream(stream: bytes) -> tuple[str, str] | None:
    """(text, finish_reason) of a whole event stream that ended with message_stop and streamed only text."""
    parts: list[str] = []
    stop: str | None = None
    for line in stream.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        try:
            event = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            return None
        kind = event.get("type")
        if kind == "error" or (kind == "content_block_start" and event["content_block"].get("type") != "text"):
            return None
        if kind == "content_block_delta":
            parts.append(event["delta"].get("text") or "")
        elif kind == "message_delta":
            stop = event["delta"].get("stop_reason")
        elif kind == "message_stop":
            return ("".join(parts), FINISH_REASONS[stop]) if stop in FINISH_REASONS else None
    return None


def with_bearer(headers: dict[str, str]) -> dict[str, str]:
    """Anthropic clients send their key as `x-api-key`: the front door and tenancy read it as the
    `Authorization: Bearer` OpenAI clients send (which wins when both are there)."""
    key = headers.get("x-api-key")
    if key and "authorization" not in headers:
        return {**headers, "authorization": f"Bearer {key}"}
    return headers
