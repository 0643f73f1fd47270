"""Retry budget and back-off on a manual clock."""

from __future__ import annotations

import random

from fleetgate.core.clock import ManualClock
from fleetgate.router.retry_budget import RetryBudget, RetryPolicy, backoff_s


def test_retries_are_capped_at_a_share_of_requests_over_the_window() -> None:
    clock = ManualClock()
    budget = RetryBudget(RetryPolicy(budget_ratio=0.2, budget_window_s=10.0, min_retries_per_s=0.0), clock)
    for _ in range(50):
        budget.request()
    assert [budget.try_retry() for _ in range(12)] == [True] * 10 + [False] * 2
    clock.advance(10.0)  # the window slid past them all
    assert not budget.try_retry(), "no requests in the window: no ratio to spend"
    budget.request()
    budget.request()
    budget.request()
    budget.request()
    budget.request()
    assert budget.try_retry() and not budget.try_retry()


def test_the_floor_allows_a_few_retries_a_second_whatever_the_traffic() -> None:
    clock = ManualClock()
    budget = RetryBudget(RetryPolicy(budget_ratio=0.2, budget_window_s=2.0, min_retries_per_s=1.5), clock)
    budget.request()
    assert [budget.try_retry() for _ in range(4)] == [True, True, True, False]
    clock.advance(2.0)
    assert budget.try_retry()


def test_backoff_is_jittered_and_grows_to_its_cap() -> None:
    policy = RetryPolicy(backoff_base_s=0.1, backoff_max_s=0.3)
    rng = random.Random(7)
    waits = {retry: [backoff_s(policy, retry, rng) for _ in range(200)] for retry in (1, 2, 3, 6)}
    assert all(0 <= w <= 0.1 for w in waits[1]) and all(0 <= w <= 0.2 for w in waits[2])
    assert all(0 <= w <= 0.3 for w in waits[3] + waits[6]) and max(waits[6]) > 0.25
    assert len(set(waits[1])) > 100, "jittered, not one fixed wait"
