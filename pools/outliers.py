"""Passive outlier detection per instance, after Envoy's: consecutive failures, growing ejections,
half-open re-admission, latency outliers, and Retry-After back-off.

Pure bookkeeping on an injected clock; `FleetRegistry` (pools/registry.py) drives it and turns its
verdicts into the published `healthy` flag, so routers never see an ejected instance.

- A failure (5xx, connect or first-byte timeout) counts; `consecutive_failures` in a row eject. A refused
  connection ejects at once: nothing listens there, which the next probe would conclude anyway.
- The n-th ejection of an instance lasts `base_ejection_s * 2^(n-1)` (the health policy's cooldown), at most `max_ejection_s`.
- After it, the instance is half-open: exactly one request may go there (`admit`). Its success closes
  the instance (ejection count reset); its failure ejects it again, for longer.
- Latency: each instance keeps its last `latency_window` first-byte times. Once it has `latency_min_samples`
  and so have at least `LATENCY_MIN_PEERS` other instances of its pool in service, an instance whose
  median is over `latency_factor` times the median of the others' medians (and over `latency_floor_s`)
  is ejected. With a single peer it cannot be told whether the instance or its share of the workload is
  slow (with one peer allowed, round-robin on two real vLLM instances on CPU split 19/21, not 20/20); Envoy's
  outlier detection likewise compares hosts only in clusters of 5 or more by default.
- A 429/503 with Retry-After marks the instance backing off for that long: out of routing, without
  counting as a failure or growing its ejections.
"""

from __future__ import annotations

import statistics
from collections import Counter, deque
from dataclasses import dataclass, field

from fleetgate.core.clock import Clock

CONSECUTIVE = "consecutive-failures"
UNREACHABLE = "unreachable"
LATENCY = "latency"
LATENCY_MIN_PEERS = 2
HALF_OPEN_FAILED = "half-open-failure"


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    consecutive_failures: int = 5
    max_ejection_s: float = 30.0
    latency_factor: float = 3.0
    latency_min_samples: int = 10
    latency_window: int = 50
    latency_floor_s: float = 0.05


@dataclass(slots=True)
class _Instance:
    pool: str
    failures: int = 0  # consecutive
    ejections: int = 0  # since the last success that closed it
    ejected_until_s: float = 0.0
    backoff_until_s: float = 0.0
    half_open: bool = False  # ejected before, its one trial request not yet answered well
    trial_in_flight: bool = False
    first_byte_s: deque[float] = field(default_factory=lambda: deque(maxlen=50))


class OutlierDetector:
    """Verdicts per instance name; counters for metrics (`ejections`, `half_open_trials`, `backoffs`)."""

    def __init__(self, policy: OutlierPolicy, base_ejection_s: float, clock: Clock) -> None:
        """`base_ejection_s`: the first ejection's length (the health policy's `eject_cooldown_s`)."""
        self.policy = policy
        self._base_ejection_s = base_ejection_s
        self._clock = clock
        self._instances: dict[str, _Instance] = {}
        self.ejections: Counter[tuple[str, str, str]] = Counter()  # (pool, instance, reason)
        self.half_open_trials: Counter[tuple[str, str, str]] = Counter()  # (pool, instance, success|failure)
        self.backoffs: Counter[tuple[str, str]] = Counter()  # (pool, instance)

    def _get(self, name: str, pool: str) -> _Instance:
        state = self._instances.get(name)
        if state is None:
            state = self._instances[name] = _Instance(pool, first_byte_s=deque(maxlen=self.policy.latency_window))
        return state

    def out(self, name: str) -> bool:
        """Ejected or backing off now: no request may go there, and a probe must not re-admit it."""
        state = self._instances.get(name)
        now_s = self._clock()
        return state is not None and (state.ejected_until_s > now_s or state.backoff_until_s > now_s)

    def admit(self, name: str, pool: str) -> bool:
        """Whether a request may be sent there now; a half-open instance takes one trial at a time."""
        if self.out(name):
            return False
        state = self._get(name, pool)
        if not state.half_open:
            return True
        if state.trial_in_flight:
            return False
        state.trial_in_flight = True
        return True

    def trial_in_flight(self, name: str) -> bool:
        state = self._instances.get(name)
        return state is not None and state.trial_in_flight

    def abandon(self, name: str) -> bool:
        """The attempt ended with no verdict; returns whether it was a half-open trial (now freed)."""
        state = self._instances.get(name)
        if state is None or not state.trial_in_flight:
            return False
        state.trial_in_flight = False
        return True

    def failure(self, name: str, pool: str, *, refused: bool = False) -> str | None:
        """Count a failure; returns the ejection reason when it ejects the instance. Failures of attempts sent
        before an ejection and ending during it count for nothing (the instance is out already)."""
        state = self._get(name, pool)
        if state.trial_in_flight:
            state.trial_in_flight = False
            self.half_open_trials[(pool, name, "failure")] += 1
            return self._eject(name, state, HALF_OPEN_FAILED)
        if self.out(name):
            return None
        state.failures += 1
        if refused:
            return self._eject(name, state, UNREACHABLE)
        if state.failures >= self.policy.consecutive_failures:
            return self._eject(name, state, CONSECUTIVE)
        return None

    def success(self, name: str, pool: str, first_byte_s: float | None, pool_members: tuple[str, ...], *,
                complete: bool = True) -> str | None:
        """A first byte (not a 5xx): closes a half-open instance, checks its latency (`first_byte_s`, streams
        only) against `pool_members`, and when the answer is `complete` (not a stream that may still be cut)
        ends the failure run; returns "latency" when it ejects the instance."""
        state = self._get(name, pool)
        if complete:
            state.failures = 0
        if state.trial_in_flight:
            state.half_open = state.trial_in_flight = False
            state.ejections = 0
            self.half_open_trials[(pool, name, "success")] += 1
        if first_byte_s is None:
            return None
        state.first_byte_s.append(first_byte_s)
        if self._latency_outlier(name, state, pool_members):
            return self._eject(name, state, LATENCY)
        return None

    def back_off(self, name: str, pool: str, seconds: float) -> None:
        state = self._get(name, pool)
        state.backoff_until_s = max(state.backoff_until_s, self._clock() + seconds)
        if state.half_open:
            state.trial_in_flight = False  # the trial learnt nothing: let the next one try after the back-off
        self.backoffs[(pool, name)] += 1

    def _eject(self, name: str, state: _Instance, reason: str) -> str:
        policy = self.policy
        state.ejections += 1
        state.failures = 0
        state.half_open = True
        state.first_byte_s.clear()
        duration_s = min(policy.max_ejection_s, self._base_ejection_s * 2 ** (state.ejections - 1))
        state.ejected_until_s = self._clock() + duration_s
        self.ejections[(state.pool, name, reason)] += 1
        return reason

    def _latency_outlier(self, name: str, state: _Instance, pool_members: tuple[str, ...]) -> bool:
        policy = self.policy
        if len(state.first_byte_s) < policy.latency_min_samples:
            return False
        others = [s for member in pool_members if member != name and (s := self._instances.get(member)) is not None
                  and not self.out(member) and len(s.first_byte_s) >= policy.latency_min_samples]
        if len(others) < LATENCY_MIN_PEERS:  # too few to tell an outlier from its share of the workload
            return False
        mine = statistics.median(state.first_byte_s)
        typical = statistics.median(statistics.median(s.first_byte_s) for s in others)
        return mine > policy.latency_floor_s and mine > policy.latency_factor * typical
