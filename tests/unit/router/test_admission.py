"""Admission's queue discipline, judged by events: a fake clock, fake estimates, no timers relied on
(recheck_s is an hour; the tests pump through capacity_freed and run the recheck tick by hand)."""

from __future__ import annotations

import asyncio

import pytest

from fleetgate.core.errors import AdmissionQueueFullError, FleetOverloadedError, NoHealthyInstanceError
from fleetgate.router.admission import GUARD_WINDOW_S, Admission, Option, priority_class

POOLS = ("chat",)


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


class Metrics:
    def __init__(self) -> None:
        self.depth = 0
        self.waits: list[str] = []
        self.sheds: list[tuple[int, str, int]] = []

    def admission_depth(self, pools: str, priority: int, delta: int) -> None:
        self.depth += delta

    def admission_waited(self, pools: str, priority: int, outcome: str, waited_s: float) -> None:
        self.waits.append(outcome)

    def admission_shed(self, pools: str, priority: int, reason: str, status: int) -> None:
        self.sheds.append((priority, reason, status))


class Fleet:
    """The estimate every probe returns (seconds from now; None: a router without estimates)."""

    def __init__(self, estimate_s: float | None) -> None:
        self.estimate_s = estimate_s
        self.error: Exception | None = None

    def probe(self, name: str):
        def probe() -> Option[str]:
            if self.error is not None:
                raise self.error
            return Option(name, self.estimate_s)
        return probe


def make(queue_size: int = 100) -> tuple[Admission, Clock, Metrics]:
    clock, metrics = Clock(), Metrics()
    return Admission(queue_size=queue_size, recheck_s=3600.0, max_wait_s=30.0, metrics=metrics, clock=clock), clock, metrics


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


def start(admission: Admission, clock: Clock, fleet: Fleet, name: str, *, tenant: str = "t", priority: int = 0,
          slo_s: float | None = 2.0, tokens: int = 100, done: list[str] | None = None) -> asyncio.Task:
    async def run() -> str:
        admitted = await admission.admit(POOLS, tenant=tenant, priority=priority, tokens=tokens, slo_s=slo_s,
                                         arrival_s=clock.now_s, probe=fleet.probe(name))
        if done is not None:
            done.append(admitted.route)
        return admitted.route
    return asyncio.ensure_future(run())


async def drain(admission: Admission, fleet: Fleet) -> None:
    fleet.estimate_s = 0.1
    admission.capacity_freed("chat")
    await settle()


def test_priority_class_key_overrides_rule() -> None:
    assert priority_class(None, 3) == 3
    assert priority_class("high", -5) == 1 and priority_class("low", 5) == -1


async def test_fast_path_when_estimate_meets_slo_and_nothing_waits() -> None:
    admission, clock, metrics = make()
    admitted = await admission.admit(POOLS, tenant="t", priority=0, tokens=10, slo_s=2.0, arrival_s=clock.now_s,
                                     probe=Fleet(1.5).probe("a"))
    assert (admitted.route, admitted.waited_s) == ("a", 0.0)
    assert metrics.waits == [] and admission.depth(POOLS) == 0
    no_estimate = await admission.admit(POOLS, tenant="t", priority=0, tokens=10, slo_s=2.0, arrival_s=clock.now_s,
                                        probe=Fleet(None).probe("b"))  # a router without estimates is let through
    assert no_estimate.route == "b"


async def test_waiters_leave_highest_priority_first_then_in_arrival_order() -> None:
    admission, clock, metrics = make()
    fleet, done = Fleet(5.0), []
    tasks = [start(admission, clock, fleet, name, priority=p, done=done)
             for name, p in (("low1", -1), ("normal1", 0), ("high1", 1), ("low2", -1), ("high2", 1))]
    await settle()
    assert done == [] and admission.depth(POOLS) == 5 and metrics.depth == 5
    clock.now_s += 0.5
    await drain(admission, fleet)
    assert done == ["high1", "high2", "normal1", "low1", "low2"]
    assert all(t.done() for t in tasks) and metrics.depth == 0 and metrics.waits == ["dispatched"] * 5
    assert tasks[0].result() == "low1"


async def test_a_higher_class_that_fits_passes_lower_waiters() -> None:
    admission, clock, _ = make()
    fleet = Fleet(5.0)
    low = start(admission, clock, fleet, "low", priority=-1, slo_s=2.0)
    await settle()
    fleet.estimate_s = 1.0
    high = await admission.admit(POOLS, tenant="t", priority=1, tokens=1, slo_s=2.0, arrival_s=clock.now_s,
                                 probe=fleet.probe("high"))
    assert high.waited_s == 0.0 and not low.done()
    low.cancel()
    await settle()


async def test_within_a_class_tenants_share_by_virtual_token_counters() -> None:
    admission, clock, _ = make()
    fleet, done = Fleet(5.0), []
    for i in range(6):
        start(admission, clock, fleet, f"heavy{i}", tenant="heavy", done=done)
    for i in range(2):
        start(admission, clock, fleet, f"light{i}", tenant="light", done=done)
    await settle()
    await drain(admission, fleet)
    assert done[:4] == ["heavy0", "light0", "heavy1", "light1"]  # the light tenant is not stuck behind the heavy one


async def test_counters_charge_tokens_not_requests() -> None:
    admission, clock, _ = make()
    fleet, done = Fleet(5.0), []
    for i in range(3):
        start(admission, clock, fleet, f"big{i}", tenant="big", tokens=1000, done=done)
    for i in range(3):
        start(admission, clock, fleet, f"small{i}", tenant="small", tokens=100, done=done)
    await settle()
    await drain(admission, fleet)
    assert done[:4] == ["big0", "small0", "small1", "small2"]


async def test_a_tenant_that_starts_waiting_is_lifted_to_the_lowest_waiting_counter() -> None:
    admission, clock, _ = make()
    fleet, done = Fleet(5.0), []
    for i in range(8):
        start(admission, clock, fleet, f"a{i}", tenant="a", done=done)
    await settle()
    fleet.estimate_s = 0.1
    for _ in range(4):  # four of a's requests go; a's counter is 400 while b is idle
        admission._pump(admission._queues[POOLS])
        fleet.estimate_s = 5.0
        await settle()
        fleet.estimate_s = 0.1
    fleet.estimate_s = 5.0
    for i in range(4):
        start(admission, clock, fleet, f"b{i}", tenant="b", done=done)
    await settle()
    await drain(admission, fleet)
    assert done[4:8] == ["a4", "b0", "a5", "b1"]  # b banked nothing while idle: it does not get four in a row


async def test_full_queue_sheds_lowest_class_newest_first_with_429() -> None:
    admission, clock, metrics = make(queue_size=3)
    fleet = Fleet(5.0)
    low_old = start(admission, clock, fleet, "low-old", priority=-1)
    low_new = start(admission, clock, fleet, "low-new", priority=-1)
    normal = start(admission, clock, fleet, "normal", priority=0)
    await settle()
    high = start(admission, clock, fleet, "high", priority=1)
    await settle()
    with pytest.raises(AdmissionQueueFullError) as shed:
        low_new.result()
    assert shed.value.status == 429 and shed.value.headers()["Retry-After"] == "5"
    assert not low_old.done() and admission.depth(POOLS) == 3
    with pytest.raises(AdmissionQueueFullError):  # a newcomer that ranks lowest is refused itself
        await admission.admit(POOLS, tenant="t", priority=-1, tokens=1, slo_s=2.0, arrival_s=clock.now_s,
                              probe=fleet.probe("refused"))
    assert metrics.sheds == [(-1, "queue-full", 429)] * 2
    await drain(admission, fleet)
    assert high.result() == "high" and normal.result() == "normal" and low_old.result() == "low-old"


async def test_a_waiter_whose_slo_passed_is_shed_with_503() -> None:
    admission, clock, metrics = make()
    fleet = Fleet(5.0)
    late = start(admission, clock, fleet, "late", slo_s=2.0)
    patient = start(admission, clock, fleet, "patient", priority=-1, slo_s=None)  # held to the class above's SLO
    await settle()
    clock.now_s += 2.0
    admission._tick(admission._queues[POOLS])
    await settle()
    with pytest.raises(FleetOverloadedError) as shed:
        late.result()
    assert shed.value.status == 503 and shed.value.headers() == {"Retry-After": "5"}
    assert not patient.done()  # no SLO: it waits up to max_wait_s (30 s)
    clock.now_s += 30.0
    admission._tick(admission._queues[POOLS])
    await settle()
    assert isinstance(patient.exception(), FleetOverloadedError)
    assert metrics.sheds == [(0, "slo", 503), (-1, "max-wait", 503)] and metrics.depth == 0


async def test_a_client_that_leaves_is_removed_from_the_queue() -> None:
    admission, clock, metrics = make()
    fleet = Fleet(5.0)
    gone = start(admission, clock, fleet, "gone")
    stays = start(admission, clock, fleet, "stays")
    await settle()
    gone.cancel()
    await settle()
    assert admission.depth(POOLS) == 1 and metrics.waits == ["gone"]
    await drain(admission, fleet)
    assert stays.result() == "stays" and metrics.depth == 0


async def test_low_priority_keeps_headroom_for_a_tighter_higher_class() -> None:
    admission, clock, _ = make()
    fleet = Fleet(1.0)
    await admission.admit(POOLS, tenant="chat", priority=1, tokens=1, slo_s=2.0, arrival_s=clock.now_s,
                          probe=fleet.probe("chat"))
    fleet.estimate_s = 5.0  # within the batch SLO (120 s) but past the chat SLO seen a moment ago
    batch = start(admission, clock, fleet, "batch", priority=-1, slo_s=120.0)
    await settle()
    assert not batch.done()
    clock.now_s += GUARD_WINDOW_S + 1  # chat went quiet: its headroom is released
    admission.capacity_freed("chat")
    await settle()
    assert batch.result() == "batch"


async def test_a_waiter_gets_the_error_when_routing_fails() -> None:
    admission, clock, metrics = make()
    fleet = Fleet(5.0)
    waiter = start(admission, clock, fleet, "w")
    await settle()
    fleet.error = NoHealthyInstanceError("none left")
    admission.capacity_freed("chat")
    await settle()
    assert isinstance(waiter.exception(), NoHealthyInstanceError) and metrics.waits == ["failed"]
