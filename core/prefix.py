"""Canonical prompt rendering and prefix block hashing for affinity routing.

The prompt is rendered the same way on every replica (roles and contents in order, tools first),
cut into `block_chars` blocks (256 chars, about 64 tokens) and chain-hashed with xxh3_64, so a
routing key is a pure function of the prompt prefix.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import orjson

from fleetgate.core.tokens import chain_hashes, content_text

ROUTING_BLOCK_CHARS = 256


def render_chat(messages: Iterable[Mapping[str, Any]], tools: Iterable[Any] | None = None) -> str:
    """A deterministic text rendering of a chat request: tools, then each message with its role."""
    return render_chat_marked(messages, tools)[0]


def render_chat_marked(
    messages: Iterable[Mapping[str, Any]], tools: Iterable[Any] | None = None
) -> tuple[str, tuple[int, int] | None]:
    """`render_chat`'s text and the (start, end) of the last user message's part in it (None when
    there is none), so the cache can split question from context without rendering again."""
    parts: list[str] = []
    if tools:
        parts.append("<|tools|>\n" + orjson.dumps(list(tools), option=orjson.OPT_SORT_KEYS).decode() + "\n")
    last_user: int | None = None
    for message in messages:
        text = content_text(message.get("content"))
        if message.get("tool_calls"):
            text += orjson.dumps(message["tool_calls"], option=orjson.OPT_SORT_KEYS).decode()
        if message.get("role") == "user":
            last_user = len(parts)
        parts.append(f"<|{message.get('role', 'user')}|>\n{text}\n")
    if last_user is None:
        return "".join(parts), None
    start = sum(map(len, parts[:last_user]))
    return "".join(parts), (start, start + len(parts[last_user]))


def prefix_hashes(text: str, block_chars: int = ROUTING_BLOCK_CHARS) -> tuple[int, ...]:
    """Chained xxh3 hashes of the full blocks of `text`, plus one for a trailing partial block,
    so short prompts still get a key."""
    hashes = chain_hashes(text, block_chars)
    tail = text[len(hashes) * block_chars :]
    if tail:
        hashes += chain_hashes(tail, len(tail), seed=hashes[-1] if hashes else 0)
    return tuple(hashes)
