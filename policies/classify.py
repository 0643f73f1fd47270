"""Workload classification: cheap request signals -> `WorkloadProfile` (pure, table-tested).

Every signal is computed from the parsed request without a model call, except the topic, which
may embed one short text (the last user message) with an injected `fleetgate.cache.embed.Embedder`
(sentence-transformers in production, HashingEmbedder in tests). That one embedding serves both
the policy's nearest exemplar and the trained topic head (policies/topics.py). Exemplar embeddings
are computed once, when a policy is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from fleetgate.cache.embed import Embedder
from fleetgate.core.profile import (
    CategorySource,
    ContextClass,
    WorkloadProfile,
    WorkloadShape,
)
from fleetgate.core.request import InferenceRequest
from fleetgate.policies.topics import TopicMapping, keyword_pattern


@dataclass(frozen=True, slots=True)
class ClassifierConfig:
    """Thresholds and defaults of the cheap signals (the policy's `classifier:` section)."""

    chat_output_tokens: int = 256  # expected output when max_tokens is absent
    completions_output_tokens: int = 128
    agentic_output_tokens: int = 160  # agent turns mostly emit a tool call or a short answer
    prefill_heavy_min_ratio: float = 4.0  # prompt/output >= this -> prefill-heavy
    decode_heavy_max_ratio: float = 1.0  # prompt/output <= this -> decode-heavy
    short_max_tokens: int = 2048  # prompt tokens up to this -> short
    medium_max_tokens: int = 8192
    long_max_tokens: int = 32768  # above this -> very-long
    topic_text_chars: int = 400  # tail of the last user message used for topic detection (MiniLM: ~30 ms at 400, ~80 ms at 1000 on one core)

    def __post_init__(self) -> None:
        if min(self.chat_output_tokens, self.completions_output_tokens, self.agentic_output_tokens, self.topic_text_chars) <= 0:
            raise ValueError("expected output tokens and topic_text_chars must be positive")
        if not self.decode_heavy_max_ratio < self.prefill_heavy_min_ratio:
            raise ValueError("decode_heavy_max_ratio must be below prefill_heavy_min_ratio")
        if not 0 < self.short_max_tokens < self.medium_max_tokens < self.long_max_tokens:
            raise ValueError("context thresholds must increase: short < medium < long")

    def context_class(self, prompt_tokens: int) -> ContextClass:
        if prompt_tokens <= self.short_max_tokens:
            return "short"
        if prompt_tokens <= self.medium_max_tokens:
            return "medium"
        return "long" if prompt_tokens <= self.long_max_tokens else "very-long"

    def shape(self, prompt_tokens: int, output_tokens: int) -> WorkloadShape:
        ratio = prompt_tokens / max(output_tokens, 1)
        if ratio >= self.prefill_heavy_min_ratio:
            return "prefill-heavy"
        return "decode-heavy" if ratio <= self.decode_heavy_max_ratio else "balanced"


@dataclass(frozen=True, slots=True)
class TopicCategory:
    """A category as the classifier needs it: keywords (whole words, any case) and exemplars."""

    name: str
    keywords: tuple[str, ...] = ()
    exemplars: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TopicMatch:
    category: str
    score: float
    source: CategorySource
    candidates: tuple[tuple[str, float], ...] = ()  # the top two categories and their scores, best first


class TopicClassifier:
    """The policy's keywords in category order first, then its nearest exemplar above
    `min_similarity`, then the trained topic head (`head`, when the policy has `topics:`).

    Built once per policy: keyword patterns are compiled and exemplars embedded here, so a
    request costs a few regex scans plus, only when no keyword hit, one embedding of its text,
    which the exemplars and the head share. Without an embedder the head still scores its
    fragment's keywords (an embedding of zeros).
    """

    def __init__(
        self,
        categories: Sequence[TopicCategory],
        embedder: Embedder | None = None,
        *,
        min_similarity: float = 0.35,
        default_category: str = "general",
        head: TopicMapping | None = None,
    ) -> None:
        self.default_category = default_category
        self.min_similarity = min_similarity
        if head is not None and embedder is not None and embedder.dim != head.dim:
            raise ValueError(f"the topic head reads {head.dim}-d embeddings (all-MiniLM-L6-v2); this embedder gives {embedder.dim}")
        self.head = head
        self._patterns = [(c.name, keyword_pattern(c.keywords)) for c in categories if c.keywords]
        labelled = [(c.name, text) for c in categories for text in c.exemplars]
        self._embedder = embedder if labelled or head is not None else None
        self._labels = [name for name, _ in labelled]
        self._matrix = (
            np.asarray(embedder.embed([text for _, text in labelled]), dtype=np.float32)
            if embedder is not None and labelled
            else None
        )

    @property
    def uses_embeddings(self) -> bool:
        """True when a request may be embedded (callers then classify off the event loop)."""
        return self._embedder is not None

    def keyword(self, text: str) -> str | None:
        for name, pattern in self._patterns:
            if pattern is not None and pattern.search(text):
                return name
        return None

    def without_embedding(self, text: str) -> TopicMatch | None:
        """The keyword match, or the topic when no embedding would help; None: embed `text`."""
        hit = self.keyword(text)
        if hit is not None:
            return TopicMatch(hit, 1.0, "keyword", ((hit, 1.0),))
        if not text.strip():
            return TopicMatch(self.default_category, 0.0, "default")
        if self._embedder is None:
            return self._from_head(text, None) if self.head is not None else TopicMatch(self.default_category, 0.0, "default")
        return None

    def nearest(self, vector: np.ndarray, text: str = "") -> TopicMatch:
        """From `vector` (the L2-normalised embedding of `text`): the nearest exemplar's category
        when it is similar enough, else the head's category, else the default."""
        best_score = 0.0
        if self._matrix is not None:
            similarities = self._matrix @ np.asarray(vector, dtype=np.float32).reshape(-1)
            ranked = self._ranked_exemplars(similarities)
            best_score = ranked[0][1]
            if best_score >= self.min_similarity:
                return TopicMatch(ranked[0][0], best_score, "exemplar", tuple(ranked[:2]))
        if self.head is not None:
            return self._from_head(text, vector)
        return TopicMatch(self.default_category, best_score, "default")

    def _ranked_exemplars(self, similarities: np.ndarray) -> list[tuple[str, float]]:
        """(category, best similarity of its exemplars), best first."""
        best: dict[str, float] = {}
        for label, score in zip(self._labels, similarities.tolist()):
            best[label] = max(best.get(label, -1.0), round(score, 4))
        return sorted(best.items(), key=lambda item: -item[1])

    def _from_head(self, text: str, vector: np.ndarray | None) -> TopicMatch:
        assert self.head is not None
        category, probability, top = self.head.decide(text, vector)
        return TopicMatch(category, round(probability, 4), "classifier" if category == top[0][0] else "default", top)

    def classify(self, text: str) -> TopicMatch:
        """Synchronous topic (embeds in the calling thread; the gateway embeds asynchronously)."""
        match = self.without_embedding(text)
        if match is not None:
            return match
        assert self._embedder is not None
        return self.nearest(self._embedder.embed([text])[0], text)


def _is_agentic(tools: Any, messages: Sequence[Mapping[str, Any]]) -> bool:
    if tools:
        return True
    return any(m.get("role") in ("tool", "function") or (m.get("role") == "assistant" and m.get("tool_calls")) for m in messages)


def _plain_text(content: Any) -> str:
    """Only the words of a message (text parts), unlike the routing render which keeps every part."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    return ""


def _topic_text(request: InferenceRequest, chars: int) -> str:
    """The tail of the last user message (or of the prompt): where the question usually is."""
    if request.messages is None:
        return (request.prompt or "")[-chars:]
    for message in reversed(request.messages):
        if message.get("role") == "user":
            return _plain_text(message.get("content"))[-chars:]
    return ""


@dataclass(frozen=True, slots=True)
class WorkloadClassifier:
    """InferenceRequest -> WorkloadProfile; pure apart from the injected topic embedder."""

    config: ClassifierConfig = field(default_factory=ClassifierConfig)
    topics: TopicClassifier | None = None

    def topic_text(self, request: InferenceRequest) -> str:
        return _topic_text(request, self.config.topic_text_chars)

    def classify(self, request: InferenceRequest, topic: TopicMatch | None = None) -> WorkloadProfile:
        """The profile of `request`; `topic` when the caller already found it (asynchronously)."""
        config = self.config
        prompt_tokens = request.prompt_tokens
        if request.messages is not None:
            turns = sum(1 for m in request.messages if m.get("role") == "user")
            agentic = _is_agentic(request.tools, request.messages)
        else:
            turns = 1
            agentic = bool(request.tools)
        requested = request.max_tokens is not None and request.max_tokens > 0
        if requested:
            output_tokens = int(request.max_tokens or 0)
        elif agentic:
            output_tokens = config.agentic_output_tokens
        elif request.api == "chat":
            output_tokens = config.chat_output_tokens
        else:
            output_tokens = config.completions_output_tokens
        if topic is None:
            topic = self.topics.classify(self.topic_text(request)) if self.topics is not None else TopicMatch("general", 0.0, "default")
        return WorkloadProfile(
            api=request.api,
            model=request.model,
            tenant=request.tenant,
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
            turns=turns,
            agentic=agentic,
            session_id=request.session_id or request.user,
            shape=config.shape(prompt_tokens, output_tokens),
            context_class=config.context_class(prompt_tokens),
            category=topic.category,
            category_score=topic.score,
            category_source=topic.source,
            category_candidates=topic.candidates,
            output_tokens_requested=requested,
        )
