"""Request coalescing: of identical lookups that miss at once, one leads (goes upstream), the others wait for its answer.

A leader that never answers (its upstream call failed and nobody released it) holds its waiters at
most `timeout_s` on the injected clock; after that its slot is stale and the next lookup leads.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Generic, TypeVar

from fleetgate.core.clock import Clock

T = TypeVar("T")  # what a leader hands its waiters

DEFAULT_COALESCE_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class _Slot(Generic[T]):
    answer: asyncio.Future[T | None]
    since_s: float


class Coalescer(Generic[T]):
    """In-flight misses by entry id; a `timeout_s` of 0 turns coalescing off."""

    def __init__(self, clock: Clock, timeout_s: float = DEFAULT_COALESCE_TIMEOUT_S) -> None:
        self._clock = clock
        self._timeout_s = timeout_s
        self._slots: dict[str, _Slot[T]] = {}

    def _remaining_s(self, slot: _Slot[T]) -> float:
        return self._timeout_s - (self._clock() - slot.since_s)

    def live(self, entry_id: str) -> bool:
        """A leader for `entry_id` is in flight and within its time: wait for it rather than lead."""
        slot = self._slots.get(entry_id)
        return slot is not None and self._remaining_s(slot) > 0

    def lead(self, entry_id: str) -> bool:
        """Take the slot of `entry_id` (no live one is held) so identical lookups wait for our answer; False: coalescing is off."""
        if self._timeout_s <= 0:
            return False
        for stale in [e for e, slot in self._slots.items() if self._remaining_s(slot) <= 0]:
            self.settle(stale, None)  # a leader that never stored (upstream failed): release its waiters
        self._slots[entry_id] = _Slot(asyncio.get_running_loop().create_future(), self._clock())
        return True

    async def wait(self, entry_id: str) -> T | None:
        """The leader's answer; None when it had none, gave up, or ran past its time."""
        slot = self._slots.get(entry_id)
        if slot is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(slot.answer), max(0.0, self._remaining_s(slot)))
        except TimeoutError:
            return None

    def settle(self, entry_id: str, answer: T | None) -> None:
        """The leader is done: hand its waiters `answer` (None sends them upstream) and free the slot."""
        slot = self._slots.pop(entry_id, None)
        if slot is not None and not slot.answer.done():
            slot.answer.set_result(answer)
