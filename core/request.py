"""The parsed inference request that flows through the gateway (frozen, built once at ingress).

Its canonical prompt text, token count and routing prefix hashes are derived when it is built, so
classification, the cache key, routing and cache replay all read one rendering of the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from fleetgate.core.prefix import prefix_hashes, render_chat_marked
from fleetgate.core.tokens import count_tokens

ApiKind = Literal["chat", "completions", "messages", "responses", "embeddings", "tokenize", "detokenize"]
"""messages: Anthropic's, held as chat (core/anthropic.py); responses: held as chat (core/responses.py);
embeddings, tokenize, detokenize: held as a prompt (tokenize's counts no tokens: it generates none)."""
PASS_THROUGH_APIS = frozenset({"responses", "embeddings", "tokenize", "detokenize"})
"""Forwarded as they are: neither classified by the policy nor cached (router/passthrough.py plans them)."""


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """An OpenAI chat or completions request, or an Anthropic messages one, validated at ingress.

    `body` is the client's JSON as received; the proxy forwards it unchanged, so fields the
    gateway does not model (logprobs, response_format, ...) reach vLLM untouched. The fields after
    `arrival_s` are derived from the prompt in `__post_init__`, never passed.
    """

    request_id: str
    api: ApiKind
    model: str
    body: Mapping[str, Any]
    stream: bool
    messages: tuple[Mapping[str, Any], ...] | None = None  # chat; messages: translated to chat (core/anthropic.py)
    prompt: str | None = None  # completions (a list prompt is joined)
    max_tokens: int | None = None
    tools: tuple[Mapping[str, Any], ...] | None = None
    temperature: float | None = None
    n: int = 1
    user: str | None = None
    session_id: str | None = None  # x-session-id header, else `user`
    tenant: str = "default"  # from the API key; never shares cache entries across tenants
    priority: str | None = None  # the key's priority class (high, normal, low); None: the policy rule's
    key_id: str | None = None  # the verified key's public id (keys file); None: the gateway has no keys file
    cache_bypass: bool = False  # Cache-Control: no-cache or no-store: neither answered from nor stored in the cache
    arrival_s: float = 0.0
    routing_text: str = field(init=False, repr=False, compare=False)  # chat rendered with roles and tools, or the prompt
    last_user_span: tuple[int, int] | None = field(init=False, repr=False, compare=False)  # the last user message's part of it
    prompt_tokens: int = field(init=False, repr=False, compare=False)
    prefix_hashes: tuple[int, ...] = field(init=False, repr=False, compare=False)  # the routers' 256-char block keys

    def __post_init__(self) -> None:
        if self.messages is not None:
            text, span = render_chat_marked(self.messages, self.tools)
        else:
            text, span = self.prompt or "", None
        object.__setattr__(self, "routing_text", text)
        object.__setattr__(self, "last_user_span", span)
        object.__setattr__(self, "prompt_tokens", count_tokens(text))
        object.__setattr__(self, "prefix_hashes", prefix_hashes(text))
