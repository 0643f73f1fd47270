"""Token usage of one request, as the backend reported it (or as the cache remembered it).

One small value type shared by the gateway (metrics, usage listeners such as rate limits), the
cache (stored with each entry, replayed on a hit) and the wire format, so the three agree on
what `cached_tokens` means: the prompt tokens served from the backend's prefix cache
(`prompt_tokens_details.cached_tokens`; 0 when the backend does not report it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, TypeGuard


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int

    @classmethod
    def from_openai(cls, usage: object) -> Usage | None:
        """An OpenAI `usage` object, or None when it is missing or malformed (never raises)."""
        if not isinstance(usage, Mapping):
            return None
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not _count(prompt) or not _count(completion):
            return None
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
        return cls(prompt, completion, cached if _count(cached) else 0)

    @classmethod
    def from_anthropic(cls, usage: object) -> Usage | None:
        """An Anthropic `usage` object counted as OpenAI counts: the prompt is every input token
        (`input_tokens` + `cache_read_input_tokens` + `cache_creation_input_tokens`, which
        Anthropic reports apart), the cache reads are its cached part; None when malformed."""
        if not isinstance(usage, Mapping):
            return None
        fresh, output = usage.get("input_tokens"), usage.get("output_tokens")
        if not _count(fresh) or not _count(output):
            return None
        read, written = usage.get("cache_read_input_tokens"), usage.get("cache_creation_input_tokens")
        read, written = (read if _count(read) else 0), (written if _count(written) else 0)
        return cls(fresh + read + written, output, read)

    @classmethod
    def from_responses(cls, usage: object) -> Usage | None:
        """A Responses API `usage` (input_tokens, output_tokens, input_tokens_details.cached_tokens)."""
        if not isinstance(usage, Mapping):
            return None
        details = usage.get("input_tokens_details")
        return cls.from_openai({"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens"),
                                "prompt_tokens_details": details if isinstance(details, Mapping) else None})

    def to_anthropic(self) -> dict[str, int]:
        """The `usage` object of an Anthropic message as vLLM 0.32 writes it (`from_anthropic` reads it back
        equal): the cached part apart from `input_tokens`, no cache writes counted apart."""
        return {"input_tokens": self.prompt_tokens - self.cached_tokens, "output_tokens": self.completion_tokens,
                "cache_creation_input_tokens": 0, "cache_read_input_tokens": self.cached_tokens}

    def to_openai(self) -> dict[str, Any]:
        """The `usage` object in vLLM's field order (it always reports cached tokens with
        --enable-prompt-tokens-details)."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "completion_tokens": self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
