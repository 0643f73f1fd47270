"""A cache hit in OpenAI's wire format, so clients cannot tell it from a backend answer.

Non-streaming requests get a whole `chat.completion` / `text_completion` object (Anthropic messages:
a `message`, and its typed events when streamed, core/anthropic.py); streaming ones get
the same chunk sequence vLLM sends (role chunk, content chunks, a finish chunk, a usage chunk when
`stream_options.include_usage` asks for it, then `[DONE]`). Usage is the one the backend reported
when the answer was stored; entries stored before usage was kept get it counted with the project's
stand-in tokenizer, the whole prompt reported as cached.
"""

from __future__ import annotations

import time
from typing import Any, AsyncGenerator

import orjson

from fleetgate.core.anthropic import STOP_REASONS, message_body, stream_end, stream_start, stream_text
from fleetgate.core.plan import CacheHit
from fleetgate.core.request import InferenceRequest
from fleetgate.core.tokens import count_tokens
from fleetgate.core.usage import Usage

REPLAY_CHUNK_CHARS = 64  # text per SSE chunk: a few tokens, like a real stream but without the wait


def hit_usage(request: InferenceRequest, hit: CacheHit) -> Usage:
    """What a hit reports (and the gateway counts as saved): the stored usage, else the stand-in estimate."""
    if hit.usage is not None:
        return hit.usage
    return Usage(request.prompt_tokens, count_tokens(hit.text), cached_tokens=request.prompt_tokens)


def _envelope(request: InferenceRequest, *, chunk: bool) -> dict[str, Any]:
    if request.api == "chat":
        kind, prefix = ("chat.completion.chunk" if chunk else "chat.completion"), "chatcmpl"
    else:
        kind, prefix = "text_completion", "cmpl"
    return {"id": f"{prefix}-cache-{request.request_id}", "object": kind, "created": int(time.time()), "model": request.model}


def replay_body(request: InferenceRequest, hit: CacheHit) -> dict[str, Any]:
    """The full (non-streaming) response object of a hit."""
    if request.api == "messages":
        return message_body(f"msg_cache-{request.request_id}", request.model, hit.text, _stop_reason(hit),
                            hit_usage(request, hit).to_anthropic())
    if request.api == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": hit.text}}
    else:
        choice = {"index": 0, "text": hit.text}
    choice.update(logprobs=None, finish_reason=hit.finish_reason)
    return {**_envelope(request, chunk=False), "choices": [choice], "usage": hit_usage(request, hit).to_openai()}


def replay_chunks(request: InferenceRequest, hit: CacheHit) -> list[dict[str, Any]]:
    """The stream's events as objects, in order (without the final `[DONE]`)."""
    base = _envelope(request, chunk=True)
    chat = request.api == "chat"

    def event(content: str | None, *, role: bool = False, finish_reason: str | None = None) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if content is not None:
                delta["content"] = content
            choice: dict[str, Any] = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": content or ""}
        choice.update(logprobs=None, finish_reason=finish_reason)
        return {**base, "choices": [choice]}

    events = [event("", role=True)] if chat else []
    events += [event(hit.text[i : i + REPLAY_CHUNK_CHARS]) for i in range(0, len(hit.text), REPLAY_CHUNK_CHARS)]
    events.append(event(None if chat else "", finish_reason=hit.finish_reason))
    options = request.body.get("stream_options") or {}
    if isinstance(options, dict) and options.get("include_usage"):
        events.append({**base, "choices": [], "usage": hit_usage(request, hit).to_openai()})
    return events


async def replay_sse(request: InferenceRequest, hit: CacheHit) -> AsyncGenerator[bytes, None]:
    """The hit as SSE bytes, ending with `data: [DONE]` (messages: with `message_stop`)."""
    if request.api == "messages":
        async for event in _message_events(request, hit):
            yield event
        return
    for payload in replay_chunks(request, hit):
        yield b"data: " + orjson.dumps(payload) + b"\n\n"
    yield b"data: [DONE]\n\n"


def _stop_reason(hit: CacheHit) -> str:
    """The cache keeps OpenAI's finish_reason whatever the API (router/anthropic.py); messages say Anthropic's."""
    return STOP_REASONS.get(hit.finish_reason, hit.finish_reason)


async def _message_events(request: InferenceRequest, hit: CacheHit) -> AsyncIterator[bytes]:
    """A messages hit as the typed events vLLM streams: message_start, the text block, message_delta, message_stop."""
    usage = hit_usage(request, hit)
    yield stream_start(f"msg_cache-{request.request_id}", request.model, usage.prompt_tokens - usage.cached_tokens)
    for i in range(0, len(hit.text), REPLAY_CHUNK_CHARS):
        yield stream_text(hit.text[i: i + REPLAY_CHUNK_CHARS])
    yield stream_end(_stop_reason(hit), usage.to_anthropic())
