"""Workload classification: cheap request signals -> `WorkloadProfile` (pure, table-tested)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ContextClass = Literal["short", "medium", "long", "very-long"]
WorkloadShape = Literal["prefill-heavy", "balanced", "decode-heavy"]


@dataclass(frozen=True, slots=True)
class WorkloadProfile:
    """Everything policy rules can condition on, computed once per request."""

    api: Literal["chat", "completions"]
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
    category_score: float = 0.0  # similarity to the winning exemplar, or 1.0 for a keyword hit

    @property
    def multi_turn(self) -> bool:
        return self.turns > 1
