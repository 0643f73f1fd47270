"""Which requests may use the cache, which answers may be stored, and which stored answers may serve a request.

Kept apart from the lookup flow because these are the policy's promises to clients, each a pure decision.
"""

from __future__ import annotations

from fleetgate.cache.policy import CachePolicy
from fleetgate.cache.store import Answer
from fleetgate.core.request import InferenceRequest

# "length" answers are whole answers to their max_tokens (the emulator always ends so); they are only
# served to requests asking for no more tokens. Cut or errored streams never reach the cache.
CACHEABLE_FINISH_REASONS = frozenset({"stop", "length"})


def bypass_reason(request: InferenceRequest, policy: CachePolicy | None) -> str | None:
    """Why `request` may not use the cache under `policy` (None: it may)."""
    if policy is None:
        return "no-policy"
    if not policy.enabled:
        return "disabled"
    if request.cache_bypass:
        return "client-no-cache"
    rules = policy.cacheable
    # an unset temperature counts as cacheable: the client asked for no particular diversity
    if rules.max_temperature is not None and request.temperature is not None and request.temperature > rules.max_temperature:
        return "temperature"
    if request.tools and not rules.tools:
        return "tools"
    if request.n > rules.max_n:
        return "n"
    return None


def refusal(answer: Answer) -> str | None:
    """Why `answer` must not be stored (None: it may): only whole, non-empty answers are worth replaying."""
    if not answer.text:
        return "empty"
    if answer.finish_reason not in CACHEABLE_FINISH_REASONS:
        return f"finish-{answer.finish_reason}"
    return None


def fits(answer: Answer, max_tokens: int | None) -> bool:
    """A "length" answer was cut at its request's max_tokens: it serves only requests asking for no more."""
    if answer.finish_reason != "length":
        return True
    return max_tokens is not None and answer.max_tokens is not None and max_tokens <= answer.max_tokens
