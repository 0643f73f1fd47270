"""The semantic cache's plain counters: every part counts into one object that the gateway exports at scrape time."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class CacheStats:
    """Plain counters for metrics; keys are categories, or (category, reason)."""

    hits: Counter[str] = field(default_factory=Counter)
    exact_hits: Counter[str] = field(default_factory=Counter)  # subset of hits answered without embedding
    relaxed_hits: Counter[str] = field(default_factory=Counter)  # subset of hits only the relaxed threshold allowed
    coalesced: Counter[str] = field(default_factory=Counter)  # subset of hits served by an in-flight identical miss
    misses: Counter[str] = field(default_factory=Counter)
    verifier_rejections: Counter[str] = field(default_factory=Counter)  # candidates refused (unverifiable ones included)
    false_hits: Counter[str] = field(default_factory=Counter)  # hits a client reported wrong (their entries dropped)
    bypasses: Counter[tuple[str, str]] = field(default_factory=Counter)
    stores: Counter[str] = field(default_factory=Counter)
    not_stored: Counter[tuple[str, str]] = field(default_factory=Counter)
    evictions: Counter[tuple[str, str]] = field(default_factory=Counter)  # reason: quota, expired, gone, deleted, feedback
    adaptations: Counter[tuple[str, str]] = field(default_factory=Counter)  # (category, relax|restore)
    store_unavailable: int = 0  # calls that found the document store down (logged as warnings)
    rebuilds: int = 0
