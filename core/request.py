"""The parsed inference request that flows through the gateway (frozen, built once at ingress)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

ApiKind = Literal["chat", "completions"]


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """An OpenAI chat or completions request, validated at ingress.

    `body` is the client's JSON as received; the proxy forwards it unchanged, so fields the
    gateway does not model (logprobs, response_format, ...) reach vLLM untouched.
    """

    request_id: str
    api: ApiKind
    model: str
    body: Mapping[str, Any]
    stream: bool
    messages: tuple[Mapping[str, Any], ...] | None = None  # chat
    prompt: str | None = None  # completions (a list prompt is joined)
    max_tokens: int | None = None
    tools: tuple[Mapping[str, Any], ...] | None = None
    temperature: float | None = None
    n: int = 1
    user: str | None = None
    session_id: str | None = None  # x-session-id header, else `user`
    tenant: str = "default"  # from the API key; never shares cache entries across tenants
    arrival_s: float = 0.0
