"""vLLM's OpenAI-compatible wire format, as far as the emulator speaks it: request bodies
(pydantic, unknown fields accepted as vLLM does), response and SSE chunk bodies, error bodies."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

ApiKind = Literal["chat", "completion", "messages"]  # messages: Anthropic's (anthropic.py), generated as chat


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class _GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # sampling knobs the emulator ignores (temperature, top_p, ...)

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)  # one choice: the emulator samples a single sequence
    temperature: float | None = Field(default=None, ge=0)  # checked as vLLM does, otherwise ignored
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    ignore_eos: bool = False  # vLLM extension: generate exactly max_tokens


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[Any] | None = None


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Any] | None = None


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str] | list[int]


class BadRequest(Exception):
    """A request vLLM would refuse; `status` 400 or 404."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, kind: str | None = None) -> None:
        """`kind`: vLLM's error type where its handler names one (else the status's usual one)."""
        super().__init__(message)
        self.status = status
        self.param = param
        self.kind = kind


def parse_request(body: bytes, kind: ApiKind) -> ChatCompletionRequest | CompletionRequest:
    """Validate a JSON body; every problem becomes a BadRequest naming the field."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Invalid JSON body: {exc}", param="body") from None
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object", param="body")
    model = ChatCompletionRequest if kind == "chat" else CompletionRequest
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors)
        raise BadRequest(problems, param=".".join(str(p) for p in errors[0]["loc"]) or "body") from None


def error_body(message: str, status: int, param: str | None = None, kind: str | None = None) -> bytes:
    """vLLM's error object (`ErrorResponse`, nested under "error" since vLLM 0.1x, as OpenAI's)."""
    return orjson.dumps({"error": {"message": message, "type": kind or error_type(status), "param": param,
                                   "code": status}})


SCHEMA_ERROR = "Bad Request"
"""vLLM's error type for a body its request schema refuses (FastAPI validation), in OpenAI's shape on every route."""


def error_type(status: int) -> str:
    """vLLM's name for the error type of an HTTP status."""
    return {400: "BadRequestError", 404: "NotFoundError", 503: "ServiceUnavailableError"}.get(
        status, "InternalServerError" if status >= 500 else "BadRequestError"
    )


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


SYSTEM_FINGERPRINT = "vllm-0.32.0-emulator"
"""vLLM's default (`--fingerprint-mode full`) stamps one on whole answers and on a stream's last event."""


def response_body(
    kind: ApiKind, request_id: str, created: int, model: str, text: str, finish_reason: str, usage_: dict[str, Any]
) -> bytes:
    """A whole non-streamed response."""
    if kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason, "stop_reason": None}
        obj = "text_completion"
    return orjson.dumps({"id": request_id, "object": obj, "created": created, "model": model, "choices": [choice],
                         "system_fingerprint": SYSTEM_FINGERPRINT, "usage": usage_})


def chunk_event(
    kind: ApiKind, request_id: str, created: int, model: str, *, text: str | None = None,
    role: bool = False, finish_reason: str | None = None, usage_: dict[str, Any] | None = None,
    fingerprint: bool = False,
) -> bytes:
    """One SSE event: a text delta (chat: optionally the opening role delta), or the usage-only
    chunk with no choices that stream_options.include_usage asks for. `fingerprint`: end it with
    `system_fingerprint`, as vLLM 0.32 ends a stream's last event (the usage chunk when there is
    one, otherwise the finish event)."""
    choices: list[dict[str, Any]] = []
    if usage_ is None:
        if kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {"content": text}
            choices.append({"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason})
        else:
            choices.append({"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason, "stop_reason": None})
    chunk: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage_ is not None:
        chunk["usage"] = usage_
    if fingerprint:
        chunk["system_fingerprint"] = SYSTEM_FINGERPRINT
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


DONE_EVENT = b"data: [DONE]\n\n"
