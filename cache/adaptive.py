"""Load adaptation: while the pool a category is served by is over its SLO, the category's threshold drops to
`adaptive.min_threshold` and its TTL grows to `adaptive.max_ttl_s`.

Both are evaluated when asked (at lookup and eviction time), so they return the moment the pressure
is lifted; documents are therefore stored for the longest TTL the policy may ever grant. Nothing else
relaxes: the verifier judges every similarity candidate as strictly under pressure as without it.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Mapping

from fleetgate.cache.policy import CachePolicy

log = logging.getLogger("fleetgate.cache")


@dataclass(frozen=True, slots=True)
class InForce:
    """The similarity threshold and TTL a category is served under right now (the verifier's settings are the policy's, always)."""

    threshold: float
    ttl_s: float


def longest_ttl(policy: CachePolicy) -> float:
    """How long a document must be kept: the TTL the policy grants at its most relaxed."""
    return policy.adaptive.max_ttl_s if policy.adaptive is not None else policy.ttl_s


def _in_force(policy: CachePolicy, relaxed: bool) -> InForce:
    if relaxed and policy.adaptive is not None:
        return InForce(policy.adaptive.min_threshold, policy.adaptive.max_ttl_s)
    return InForce(policy.threshold, policy.ttl_s)


class LoadAdaptation:
    """Which pools are over their SLO, and which pools serve each category (learned from the plans looked up)."""

    def __init__(self, adaptations: Counter[tuple[str, str]]) -> None:
        self._adaptations = adaptations
        self._pressured: set[str] = set()
        self._pools_of: dict[str, set[str]] = {}

    def served_by(self, category: str, pool: str | None) -> None:
        """Learn that `category` is served by `pool` (its plan's first pool)."""
        if pool is not None:
            self._pools_of.setdefault(category, set()).add(pool)

    def set_pool_pressure(self, pool: str, over_slo: bool, policies: Mapping[str, CachePolicy]) -> None:
        """Mark `pool` over (or back under) its TTFT SLO; count the categories it serves that relax (or restore)."""
        if over_slo == (pool in self._pressured):
            return
        if over_slo:
            self._pressured.add(pool)
        else:
            self._pressured.discard(pool)
        direction = "relax" if over_slo else "restore"
        for category, pools in self._pools_of.items():
            policy = policies.get(category)
            if pool in pools and policy is not None and policy.adaptive is not None:
                self._adaptations[(category, direction)] += 1
                log.info("semantic cache %s for category %s (pool %s over SLO: %s)", direction, category, pool, over_slo)

    def effective(self, policy: CachePolicy, pool: str | None) -> InForce:
        """What is in force for a lookup planned onto `pool`."""
        return _in_force(policy, pool in self._pressured)

    def effective_for_category(self, policy: CachePolicy, category: str) -> InForce:
        """What is in force for `category` as a whole: relaxed while any pool known to serve it is pressured."""
        return _in_force(policy, bool(self._pools_of.get(category, set()) & self._pressured))
