"""Load adaptation: a pressured pool relaxes the threshold and TTL of the categories it serves, and only those."""

from __future__ import annotations

from collections import Counter

import pytest

from fleetgate.cache.adaptive import InForce, LoadAdaptation, longest_ttl
from fleetgate.cache.policy import AdaptiveBounds, CachePolicy

ADAPTIVE = CachePolicy(enabled=True, threshold=0.9, ttl_s=10.0, adaptive=AdaptiveBounds(min_threshold=0.8, max_ttl_s=100.0))
FIXED = CachePolicy(enabled=True, threshold=0.9, ttl_s=10.0)
POLICIES = {"faq": ADAPTIVE, "code": FIXED}
BASE, RELAXED = InForce(0.9, 10.0), InForce(0.8, 100.0)


@pytest.fixture()
def adaptations() -> Counter[tuple[str, str]]:
    return Counter()


@pytest.fixture()
def adaptation(adaptations: Counter[tuple[str, str]]) -> LoadAdaptation:
    adaptation = LoadAdaptation(adaptations)
    adaptation.served_by("faq", "p1")
    adaptation.served_by("code", "p1")
    adaptation.served_by("faq", None)  # a plan without pools teaches nothing
    return adaptation


@pytest.mark.parametrize(("policy", "ttl_s"), [(ADAPTIVE, 100.0), (FIXED, 10.0)])
def test_documents_live_as_long_as_the_most_relaxed_ttl(policy: CachePolicy, ttl_s: float) -> None:
    assert longest_ttl(policy) == ttl_s


@pytest.mark.parametrize(
    ("pressured", "policy", "pool", "in_force"),
    [
        ([], ADAPTIVE, "p1", BASE),
        (["p1"], ADAPTIVE, "p1", RELAXED),
        (["p1"], ADAPTIVE, "p2", BASE),  # another pool's pressure is not ours
        (["p1"], ADAPTIVE, None, BASE),
        (["p1"], FIXED, "p1", BASE),  # no bounds: never moves
        (["p1", "p2"], ADAPTIVE, "p2", RELAXED),
    ],
)
def test_effective(adaptation: LoadAdaptation, pressured: list[str], policy: CachePolicy, pool: str | None, in_force: InForce) -> None:
    for p in pressured:
        adaptation.set_pool_pressure(p, True, POLICIES)
    assert adaptation.effective(policy, pool) == in_force


@pytest.mark.parametrize(("pressured", "category", "in_force"), [([], "faq", BASE), (["p1"], "faq", RELAXED), (["p1"], "chat", BASE)])
def test_effective_for_a_whole_category(adaptation: LoadAdaptation, pressured: list[str], category: str, in_force: InForce) -> None:
    for p in pressured:
        adaptation.set_pool_pressure(p, True, POLICIES)
    assert adaptation.effective_for_category(ADAPTIVE, category) == in_force


def test_adaptations_count_changes_of_adaptive_categories_only(adaptation: LoadAdaptation, adaptations: Counter[tuple[str, str]]) -> None:
    adaptation.set_pool_pressure("p1", True, POLICIES)
    adaptation.set_pool_pressure("p1", True, POLICIES)  # no change: not counted again
    adaptation.set_pool_pressure("p2", True, POLICIES)  # serves no known category
    adaptation.set_pool_pressure("p1", False, POLICIES)
    adaptation.set_pool_pressure("p1", False, POLICIES)
    assert adaptations == {("faq", "relax"): 1, ("faq", "restore"): 1}
    assert adaptation.effective(ADAPTIVE, "p1") == BASE and adaptation.effective(ADAPTIVE, "p2") == RELAXED
