"""Coalescing on a manual clock: waiters get the leader's answer, and a leader past its time blocks nobody."""

from __future__ import annotations

import asyncio

import pytest

from fleetgate.cache.coalesce import Coalescer
from fleetgate.cache.store import Answer
from fleetgate.core.clock import ManualClock

ANSWER = Answer("shared", "stop")


@pytest.mark.parametrize(("elapsed_s", "live"), [(0.0, True), (4.99, True), (5.0, False), (60.0, False)])
async def test_a_slot_is_live_until_the_timeout(clock: ManualClock, elapsed_s: float, live: bool) -> None:
    coalescer = Coalescer(clock, timeout_s=5.0)
    assert not coalescer.live("e") and coalescer.lead("e")
    clock.advance(elapsed_s)
    assert coalescer.live("e") is live


async def test_a_zero_timeout_turns_coalescing_off(clock: ManualClock) -> None:
    coalescer = Coalescer(clock, timeout_s=0.0)
    assert not coalescer.lead("e") and not coalescer.live("e")


@pytest.mark.parametrize("answer", [ANSWER, None])  # None: the leader released its waiters (upstream failed)
async def test_waiters_get_what_the_leader_settles(clock: ManualClock, answer: Answer | None) -> None:
    coalescer = Coalescer(clock, timeout_s=5.0)
    coalescer.lead("e")
    waiters = [asyncio.create_task(coalescer.wait("e")) for _ in range(3)]
    await asyncio.sleep(0)  # let them start waiting
    assert not any(w.done() for w in waiters)
    coalescer.settle("e", answer)
    assert await asyncio.gather(*waiters) == [answer] * 3
    assert not coalescer.live("e")


async def test_a_stale_leader_is_released_by_the_next_one(clock: ManualClock) -> None:
    coalescer = Coalescer(clock, timeout_s=5.0)
    coalescer.lead("stale")
    waiter = asyncio.create_task(coalescer.wait("stale"))
    await asyncio.sleep(0)
    clock.advance(5.0)
    assert not coalescer.live("stale") and coalescer.lead("other")
    assert await waiter is None


async def test_waiting_past_the_deadline_returns_at_once(clock: ManualClock) -> None:
    coalescer = Coalescer(clock, timeout_s=5.0)
    coalescer.lead("e")
    clock.advance(6.0)
    assert await asyncio.wait_for(coalescer.wait("e"), 1.0) is None  # the deadline is the injected clock's
    assert await coalescer.wait("nobody") is None
