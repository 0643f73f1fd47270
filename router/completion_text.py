"""The generated text of a finished upstream answer, for the semantic cache.

Only complete answers are returned: a stream must end with `[DONE]` and carry a finish_reason, a
body must parse and have one choice with a finish_reason. Anything cut, errored or multi-choice
gives None, so it is never cached.
"""

from __future__ import annotations

from typing import Any

import orjson

from fleetgate.core.request import ApiKind
from fleetgate.router.anthropic import completion_of_message, completion_of_stream


def _choice_text(api: ApiKind, choice: dict[str, Any], streamed: bool) -> str:
    if api == "completions":
        return choice.get("text") or ""
    holder = choice.get("delta" if streamed else "message") or {}
    if holder.get("tool_calls"):
        raise ValueError("tool calls are not cacheable text")
    return holder.get("content") or ""


def completion_from_body(api: ApiKind, body: bytes) -> tuple[str, str] | None:
    """(text, finish_reason) of a non-streaming answer, or None when it is not a clean one (messages:
    the stop_reason)."""
    if api == "messages":
        return completion_of_message(body)
    try:
        data = orjson.loads(body)
        choices = data["choices"]
        if len(choices) != 1 or not choices[0].get("finish_reason"):
            return None
        return _choice_text(api, choices[0], streamed=False), choices[0]["finish_reason"]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def completion_from_sse(api: ApiKind, stream: bytes) -> tuple[str, str] | None:
    """(text, finish_reason) of a whole SSE stream, or None when it was cut or carried an error."""
    if api == "messages":
        return completion_of_stream(stream)
    parts: list[str] = []
    finish_reason: str | None = None
    done = False
    for line in stream.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            done = True
            break
        try:
            event = orjson.loads(payload)
            if "error" in event:
                return None
            for choice in event.get("choices", ()):
                if choice.get("index", 0) != 0:
                    return None
                parts.append(_choice_text(api, choice, streamed=True))
                finish_reason = choice.get("finish_reason") or finish_reason
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return None
    if not done or finish_reason is None:
        return None
    return "".join(parts), finish_reason
