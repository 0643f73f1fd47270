"""What classification knows about a request (`WorkloadProfile`): policy rules match on it, the plan
carries it, the cache and metrics label by its category. The classifier that computes it lives in
policies/classify.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ContextClass = Literal["short", "medium", "long", "very-long"]
WorkloadShape = Literal["prefill-heavy", "balanced", "decode-heavy"]
CategorySource = Literal["keyword", "exemplar", "classifier", "default"]  # classifier: the trained topic head
CONTEXT_CLASSES: tuple[ContextClass, ...] = ("short", "medium", "long", "very-long")
SHAPES: tuple[WorkloadShape, ...] = ("prefill-heavy", "balanced", "decode-heavy")


@dataclass(frozen=True, slots=True)
class WorkloadProfile:
    """Everything policy rules can condition on, computed once per request."""

    api: str  # core/request.py ApiKind
    model: str
    tenant: str
    prompt_tokens: int
    output_tokens: int  # requested max_tokens, else the expected output for this kind of request
    turns: int  # user turns in the conversation (1 for completions)
    agentic: bool  # tools declared, or tool calls / tool results in the history
    session_id: str | None
    shape: WorkloadShape
    context_class: ContextClass
    category: str = "general"
    category_score: float = 0.0  # similarity to the winning exemplar, the head's probability, or 1.0 for a keyword hit
    category_source: CategorySource = "default"
    category_candidates: tuple[tuple[str, float], ...] = ()  # the top two categories with their scores, best first
    output_tokens_requested: bool = False  # False when output_tokens is the expected default

    @property
    def multi_turn(self) -> bool:
        return self.turns > 1

    @property
    def has_session(self) -> bool:
        return self.session_id is not None
