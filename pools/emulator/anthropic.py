"""The emulator's `/v1/messages`: Anthropic's Messages API as vLLM serves it, a chat request underneath.

vLLM translates the body to a chat completion (core/anthropic.py does it the same way), generates,
and answers in Anthropic's shapes: a `message`, or typed SSE events (core/anthropic.py), and errors
as `{"type": "error", "error": {"type", "message"}}` with vLLM's error type names; but for a body its
schema refuses (max_tokens 0, a missing field), which vLLM's FastAPI layer answers in OpenAI's shape.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetgate.core.anthropic import (
    STOP_REASONS,
    message_body,
    openai_messages,
    openai_tools,
    stream_end,
    stream_start,
    stream_text,
)
from fleetgate.core.usage import Usage
from fleetgate.pools.emulator.protocol import SCHEMA_ERROR, BadRequest, ChatCompletionRequest, error_type


class _MessagesRequest(BaseModel):
    """The fields vLLM's AnthropicMessagesRequest checks; the rest are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]]
    max_tokens: int = Field(gt=0)
    stream: bool | None = False
    system: str | list[dict[str, Any]] | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = None


def parse_messages(raw: bytes) -> ChatCompletionRequest:
    """A messages body as the chat request vLLM makes of it; problems are BadRequests."""
    try:
        data = _MessagesRequest.model_validate(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Invalid JSON body: {exc}", param="body", kind=SCHEMA_ERROR) from None
    except ValidationError as exc:
        error = exc.errors()[0]
        raise BadRequest(f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg']}",
                         param=".".join(str(p) for p in error["loc"]) or "body", kind=SCHEMA_ERROR) from None
    body = data.model_dump(exclude_none=True)
    chat = {"model": data.model, "messages": openai_messages(body), "max_tokens": data.max_tokens,
            "stream": bool(data.stream), "temperature": data.temperature, "top_p": data.top_p,
            "tools": openai_tools(data.tools), "stop": data.stop_sequences}
    try:
        return ChatCompletionRequest.model_validate({k: v for k, v in chat.items() if v is not None})
    except ValidationError as exc:
        error = exc.errors()[0]
        raise BadRequest(f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}") from None


def error_body(message: str, status: int) -> bytes:
    """vLLM's AnthropicErrorResponse: its OpenAI error's type and message under Anthropic's envelope."""
    return orjson.dumps({"type": "error", "error": {"type": error_type(status), "message": message}})


class MessageWire:
    """One messages answer in Anthropic's shapes: whole, or as the events of a stream."""

    def __init__(self, message_id: str, model: str, prompt_tokens: int) -> None:
        self._id, self._model, self._prompt_tokens = message_id, model, prompt_tokens

    def whole(self, text: str, finish_reason: str, usage: Usage) -> dict[str, Any]:
        return message_body(self._id, self._model, text, STOP_REASONS[finish_reason], usage.to_anthropic())

    def start(self) -> bytes:
        return stream_start(self._id, self._model, self._prompt_tokens)

    def delta(self, text: str) -> bytes:
        return stream_text(text) if text else b""

    def end(self, text: str, finish_reason: str, usage: Usage) -> bytes:
        return stream_end(STOP_REASONS[finish_reason], usage.to_anthropic())
