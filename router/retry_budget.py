"""Retry budget and jittered back-off, after Envoy's retry budgets: retries may be at most `ratio` of
the requests over the last `window_s`, but `min_per_s` retries a second are always allowed (so a
quiet pool can still retry). Without a budget, a fleet-wide fault turns every request into
`max_attempts` requests exactly when the fleet can least take them.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from fleetgate.core.clock import Clock


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    budget_ratio: float = 0.2
    budget_window_s: float = 10.0
    min_retries_per_s: float = 3.0
    backoff_base_s: float = 0.025
    backoff_max_s: float = 0.25


class RetryBudget:
    """Requests and retries of one pool over a sliding window."""

    def __init__(self, policy: RetryPolicy, clock: Clock) -> None:
        self._policy = policy
        self._clock = clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    def request(self) -> None:
        """A request's first attempt (retries are not requests)."""
        self._requests.append(self._clock())

    def try_retry(self) -> bool:
        """Spend one retry if the budget has one left (and record it)."""
        now_s = self._clock()
        horizon_s = now_s - self._policy.budget_window_s
        for times in (self._requests, self._retries):
            while times and times[0] <= horizon_s:
                times.popleft()
        allowed = max(self._policy.budget_ratio * len(self._requests),
                      self._policy.min_retries_per_s * self._policy.budget_window_s)
        if len(self._retries) + 1 > allowed:
            return False
        self._retries.append(now_s)
        return True


def backoff_s(policy: RetryPolicy, retry: int, rng: random.Random) -> float:
    """Full-jitter exponential back-off before the `retry`-th retry (1, 2, ...): uniform in
    [0, min(max, base * 2^(retry-1))], so retries of many requests do not arrive together."""
    return rng.uniform(0.0, min(policy.backoff_max_s, policy.backoff_base_s * 2 ** (retry - 1)))
