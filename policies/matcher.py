"""A rule's `match:` compiled for the request path: frozensets and an integer range, no pydantic.

Also explains a match: which conditions held, or the first that failed, for `policy explain`
and the debug header.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from fleetgate.core.profile import WorkloadProfile
from fleetgate.policies.schema import Match


def _frozen(values: list[str] | None) -> frozenset[str] | None:
    return frozenset(values) if values is not None else None


@dataclass(frozen=True, slots=True)
class CompiledMatch:
    """Every given condition must hold; None means "any"."""

    api: frozenset[str] | None = None
    agentic: bool | None = None
    multi_turn: bool | None = None
    has_session: bool | None = None
    shape: frozenset[str] | None = None
    context_class: frozenset[str] | None = None
    prompt_tokens_min: int | None = None
    prompt_tokens_max: int | None = None
    category: frozenset[str] | None = None
    model: frozenset[str] | None = None
    tenant: frozenset[str] | None = None

    @classmethod
    def from_match(cls, match: Match) -> "CompiledMatch":
        return cls(
            api=_frozen(match.api),
            agentic=match.agentic,
            multi_turn=match.multi_turn,
            has_session=match.has_session,
            shape=_frozen(match.shape),
            context_class=_frozen(match.context_class),
            prompt_tokens_min=match.prompt_tokens_min,
            prompt_tokens_max=match.prompt_tokens_max,
            category=_frozen(match.category),
            model=_frozen(match.model),
            tenant=_frozen(match.tenant),
        )

    def first_failure(self, profile: WorkloadProfile) -> str | None:
        """None when `profile` matches, else the first condition that does not hold, in words."""
        for name, allowed, actual in (
            ("api", self.api, profile.api),
            ("shape", self.shape, profile.shape),
            ("context_class", self.context_class, profile.context_class),
            ("category", self.category, profile.category),
            ("model", self.model, profile.model),
            ("tenant", self.tenant, profile.tenant),
        ):
            if allowed is not None and actual not in allowed:
                return f"{name} is {actual!r}, not one of {sorted(allowed)}"
        for name, wanted, flag in (
            ("agentic", self.agentic, profile.agentic),
            ("multi_turn", self.multi_turn, profile.multi_turn),
            ("has_session", self.has_session, profile.has_session),
        ):
            if wanted is not None and flag is not wanted:
                return f"{name} is {flag}, not {wanted}"
        if self.prompt_tokens_min is not None and profile.prompt_tokens < self.prompt_tokens_min:
            return f"prompt_tokens {profile.prompt_tokens} < prompt_tokens_min {self.prompt_tokens_min}"
        if self.prompt_tokens_max is not None and profile.prompt_tokens > self.prompt_tokens_max:
            return f"prompt_tokens {profile.prompt_tokens} > prompt_tokens_max {self.prompt_tokens_max}"
        return None

    def matches(self, profile: WorkloadProfile) -> bool:
        return self.first_failure(profile) is None

    def describe(self) -> list[str]:
        """The given conditions as `name=value` strings (empty: matches everything)."""
        parts = []
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None:
                parts.append(f"{field.name}={sorted(value) if isinstance(value, frozenset) else value}")
        return parts
