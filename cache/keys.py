"""What of a request the semantic cache compares.

Only the last user message is embedded: it carries the question, while a long system prompt or
earlier turns would dominate the vector and make unrelated questions look alike. Everything else
that changes the answer must match *exactly* instead: the system prompt and earlier turns (hashed
into `context_hash`), the API kind and the response format. So two single-turn questions under
the same system prompt can hit each other as paraphrases; a short follow-up ("yes, please") only
hits an entry with the very same conversation before it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson
import xxhash

from fleetgate.cache.index import Namespace
from fleetgate.core.request import InferenceRequest

_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class RequestKey:
    text: str  # what is embedded: the last user message (chat) or the prompt (completions)
    context_hash: str  # everything else that must match exactly
    entry_id: str  # exact-match identity within the namespace: context + normalised text


def normalise(text: str) -> str:
    """Case- and whitespace-insensitive form for the exact-match path."""
    return _SPACES.sub(" ", text).strip().casefold()


def request_key(request: InferenceRequest, namespace: Namespace) -> RequestKey | None:
    """The cache key of a request, or None when it has no user text to compare."""
    context: list[str] = [request.api]
    if "response_format" in request.body:
        context.append(orjson.dumps(request.body["response_format"], option=orjson.OPT_SORT_KEYS).decode())
    if request.messages is not None:
        if request.last_user_span is None:
            return None
        start, end = request.last_user_span  # its part of the rendered chat; the rest is context
        rendered = request.routing_text
        text = rendered[start:end].removeprefix("<|user|>\n").removesuffix("\n")
        context.append(rendered[:start] + rendered[end:])
    else:
        text = request.prompt or ""
    if not text.strip():
        return None
    context_hash = xxhash.xxh3_64_hexdigest("\0".join(context).encode())
    identity = "\0".join((namespace.tenant, namespace.model, namespace.category, context_hash, normalise(text)))
    return RequestKey(text=text, context_hash=context_hash, entry_id=xxhash.xxh3_128_hexdigest(identity.encode()))
