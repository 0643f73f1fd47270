"""Which pools are over their TTFT SLO right now, from the TTFTs this replica observes.

Each first byte is scored 1 if it broke the request's SLO, else 0, into a per-pool moving average;
a pool is over SLO once that share passes `enter_ratio` and back under below `exit_ratio` (the gap
keeps the cache from flapping). The semantic cache relaxes its thresholds for pools over SLO.
"""

from __future__ import annotations


class PoolPressure:
    def __init__(self, *, alpha: float = 0.1, enter_ratio: float = 0.5, exit_ratio: float = 0.2) -> None:
        if not 0 <= exit_ratio < enter_ratio <= 1:
            raise ValueError("need 0 <= exit_ratio < enter_ratio <= 1")
        self._alpha = alpha
        self._enter = enter_ratio
        self._exit = exit_ratio
        self._share: dict[str, float] = {}
        self.over: set[str] = set()

    def observe(self, pool: str, ttft_s: float, slo_s: float) -> bool | None:
        """Record one TTFT; returns the pool's new state (True: over SLO) when it changed, else None."""
        share = self._share.get(pool, 0.0)
        share += self._alpha * ((1.0 if ttft_s > slo_s else 0.0) - share)
        self._share[pool] = share
        if pool not in self.over and share > self._enter:
            self.over.add(pool)
            return True
        if pool in self.over and share < self._exit:
            self.over.discard(pool)
            return False
        return None
