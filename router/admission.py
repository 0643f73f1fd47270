"""SLO-aware admission in front of routing: a bounded queue per pool set, priority classes, and
fairness across tenants by virtual token counters.

Why: past its capacity a fleet that takes every request makes every request late, because vLLM
serves its queue first come, first served. Admission keeps the excess here, where it can be
ordered: a request goes to an instance only while the router's TTFT estimate for its best option
meets the SLO of its own class and of every busier, higher class that shares the pools (the
"guard" SLO), so low-priority work fills the fleet only up to where high-priority work still gets in
on time. The rest waits, highest class first and within a class by tenant, lowest virtual token
counter first (VTC, as AIBrix: a tenant is charged prompt + expected output tokens at dispatch; a
tenant that starts waiting is lifted to the lowest counter among those waiting, so idle time is not
banked). A waiter whose SLO has passed cannot be served in time any more and is shed with 503; when
the queue is full the lowest class is shed first (its tenant with the highest counter, newest
request first) with 429. Both carry Retry-After.

Waiters are re-checked when capacity frees in one of their pools (a first token or an end, told by
the gateway) and every `recheck_s`, one dispatch at a time so each route sees the load the previous
one added. Nothing here awaits anything but the waiter's own future: a cancelled waiter (client
gone) is removed from its queue.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Callable, Generic, Protocol, TypeVar

from fleetgate.core.clock import Clock, monotonic_clock
from fleetgate.core.errors import AdmissionQueueFullError, FleetOverloadedError, GatewayError

KEY_PRIORITY = {"high": 1, "normal": 0, "low": -1}
"""A key's priority class on the policy's integer scale (`priority:` in a rule; higher goes first)."""
GUARD_WINDOW_S = 60.0
"""A class holds headroom for its SLO this long after its last request: a class that stopped
sending stops holding back the classes below it."""
QUEUED_HEADER = "x-fleetgate-queued-ms"

T = TypeVar("T")


def priority_class(key_priority: str | None, plan_priority: int) -> int:
    """The key's class when it has one, else the policy rule's priority."""
    return plan_priority if key_priority is None else KEY_PRIORITY[key_priority]


@dataclass(frozen=True, slots=True)
class Option(Generic[T]):
    """What routing a request now would give: the route, and its TTFT estimate from now (None: the
    router makes none, so admission cannot judge it and lets it through)."""

    route: T
    estimate_s: float | None


@dataclass(frozen=True, slots=True)
class Admitted(Generic[T]):
    route: T
    waited_s: float  # 0.0 on the fast path


class AdmissionMetrics(Protocol):
    """What admission records (router/metrics.py GatewayMetrics)."""

    def admission_depth(self, pools: str, priority: int, delta: int) -> None: ...

    def admission_waited(self, pools: str, priority: int, outcome: str, waited_s: float) -> None: ...

    def admission_shed(self, pools: str, priority: int, reason: str, status: int) -> None: ...


class _Waiter:
    __slots__ = ("tenant", "priority", "tokens", "slo_s", "arrival_s", "enqueued_s", "seq", "probe",
                 "future", "estimate_s")

    def __init__(self, tenant: str, priority: int, tokens: int, slo_s: float | None,
                 arrival_s: float, enqueued_s: float, seq: int, probe: Callable[[], Option[object]],
                 future: asyncio.Future[Admitted[object]], estimate_s: float | None) -> None:
        self.tenant = tenant
        self.priority = priority
        self.tokens = tokens
        self.slo_s = slo_s
        self.arrival_s = arrival_s
        self.enqueued_s = enqueued_s
        self.seq = seq
        self.probe = probe
        self.future = future
        self.estimate_s = estimate_s  # the last estimate seen: what Retry-After is derived from


class _Queue:
    """One pool set's waiters: class -> tenant -> FIFO, and the tenants' virtual token counters."""

    __slots__ = ("name", "pools", "classes", "counters", "size", "slo_seen", "timer")

    def __init__(self, name: str, pools: tuple[str, ...]) -> None:
        self.name = name
        self.pools = pools
        self.classes: dict[int, dict[str, deque[_Waiter]]] = {}
        self.counters: dict[str, float] = {}
        self.size = 0
        self.slo_seen: dict[int, tuple[float, float]] = {}  # class -> (tightest recent SLO, when last seen)
        self.timer: asyncio.TimerHandle | None = None

    def guard_s(self, priority: int, slo_s: float | None, now_s: float) -> float | None:
        """The tightest SLO among this class and the higher ones seen within GUARD_WINDOW_S."""
        guard = slo_s
        for other, (seen_slo_s, seen_s) in self.slo_seen.items():
            if other > priority and now_s - seen_s <= GUARD_WINDOW_S and (guard is None or seen_slo_s < guard):
                guard = seen_slo_s
        return guard

    def saw(self, priority: int, slo_s: float | None, now_s: float) -> None:
        if slo_s is not None:
            known = self.slo_seen.get(priority)
            self.slo_seen[priority] = (slo_s if known is None or now_s - known[1] > GUARD_WINDOW_S
                                       else min(slo_s, known[0]), now_s)

    def blocks(self, priority: int) -> bool:
        """Someone of this class or a higher one waits: a new request of `priority` queues behind them."""
        return self.size > 0 and any(c >= priority for c in self.classes)

    def push(self, waiter: _Waiter) -> None:
        tenants = self.classes.setdefault(waiter.priority, {})
        if not any(waiter.tenant in by_tenant for by_tenant in self.classes.values()):  # starts waiting: VTC lift
            waiting = [self.counters.get(t, 0.0) for by_tenant in self.classes.values() for t in by_tenant]
            if waiting:
                self.counters[waiter.tenant] = max(self.counters.get(waiter.tenant, 0.0), min(waiting))
        tenants.setdefault(waiter.tenant, deque()).append(waiter)
        self.size += 1

    def remove(self, waiter: _Waiter) -> bool:
        tenants = self.classes.get(waiter.priority)
        line = tenants.get(waiter.tenant) if tenants is not None else None
        if line is None or waiter not in line:
            return False
        line.remove(waiter)
        if not line:
            del tenants[waiter.tenant]  # type: ignore[union-attr]
            if not tenants:
                del self.classes[waiter.priority]
        self.size -= 1
        if self.size == 0:
            self.counters.clear()  # fairness is among tenants contending now; nothing is banked across calm
        return True

    def head(self) -> _Waiter | None:
        """Highest class; in it, the tenant with the lowest counter; its oldest request."""
        if not self.classes:
            return None
        tenants = self.classes[max(self.classes)]
        tenant = min(tenants, key=lambda t: (self.counters.get(t, 0.0), tenants[t][0].seq))
        return tenants[tenant][0]

    def shed_rank(self, priority: int, tenant: str, seq: int) -> tuple[int, float, int]:
        """Smaller is shed first: lower class, then the tenant furthest over its share, then newer."""
        return priority, -self.counters.get(tenant, 0.0), -seq

    def victim(self) -> _Waiter | None:
        if not self.classes:
            return None
        tenants = self.classes[min(self.classes)]
        tenant = max(tenants, key=lambda t: self.counters.get(t, 0.0))
        return tenants[tenant][-1]

    def charge(self, tenant: str, tokens: int) -> None:
        if self.size:  # with nobody waiting the counters are idle (cleared on the last removal)
            self.counters[tenant] = self.counters.get(tenant, 0.0) + tokens

    def expired(self, now_s: float, max_wait_s: float) -> list[_Waiter]:
        return [w for by_tenant in self.classes.values() for line in by_tenant.values() for w in line
                if _deadline_s(w, max_wait_s) <= now_s]


def _deadline_s(waiter: _Waiter, max_wait_s: float) -> float:
    """When waiting longer is pointless: the SLO has passed (an immediate dispatch misses it too), or
    the wait bound for requests without an SLO."""
    bound_s = waiter.enqueued_s + max_wait_s
    return bound_s if waiter.slo_s is None else min(bound_s, waiter.arrival_s + waiter.slo_s)


class Admission:
    """One per gateway; see the module docstring."""

    def __init__(self, *, queue_size: int, recheck_s: float, max_wait_s: float, metrics: AdmissionMetrics,
                 clock: Clock = monotonic_clock) -> None:
        self._queue_size = queue_size
        self._recheck_s = recheck_s
        self._max_wait_s = max_wait_s
        self._metrics = metrics
        self._clock = clock
        self._queues: dict[tuple[str, ...], _Queue] = {}
        self._by_pool: dict[str, list[_Queue]] = {}
        self._seq = 0

    def depth(self, pools: tuple[str, ...]) -> int:
        queue = self._queues.get(pools)
        return queue.size if queue is not None else 0

    async def admit(self, pools: tuple[str, ...], *, tenant: str, priority: int, tokens: int, slo_s: float | None,
                    arrival_s: float, probe: Callable[[], Option[T]]) -> Admitted[T]:
        """Route now (`probe`) and return at once when nothing of this class or above waits and the
        estimate meets the guard SLO; else wait for a turn. Raises AdmissionQueueFullError (429) or
        FleetOverloadedError (503) when shed; a cancelled caller leaves the queue."""
        option = probe()
        now_s = self._clock()
        queue = self._queues.get(pools)
        if queue is None:
            queue = self._queues[pools] = _Queue(",".join(pools), pools)
            for pool in pools:
                self._by_pool.setdefault(pool, []).append(queue)
        queue.saw(priority, slo_s, now_s)
        guard_s = queue.guard_s(priority, slo_s, now_s)
        if not queue.blocks(priority) and _fits(option.estimate_s, guard_s, arrival_s, now_s):
            queue.charge(tenant, tokens)
            return Admitted(option.route, 0.0)
        self._seq += 1
        if queue.size >= self._queue_size:
            self._make_room(queue, priority, tenant, option.estimate_s)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(tenant, priority, tokens, slo_s, arrival_s, now_s, self._seq,
                         probe, loop.create_future(), option.estimate_s)  # type: ignore[arg-type]
        queue.push(waiter)
        self._metrics.admission_depth(queue.name, priority, 1)
        self._arm(queue)
        try:
            return await waiter.future  # type: ignore[return-value]
        except asyncio.CancelledError:
            if queue.remove(waiter):  # still waiting: the client left
                self._left(queue, waiter, "gone")
                loop.call_soon(self._pump, queue)  # it may have blocked others
            raise

    def capacity_freed(self, pool: str) -> None:
        """A request in `pool` got its first token or ended: waiters of its pool sets may fit now."""
        queues = self._by_pool.get(pool)
        if queues:
            loop = asyncio.get_running_loop()
            for queue in queues:
                if queue.size:
                    loop.call_soon(self._pump, queue)

    def _make_room(self, queue: _Queue, priority: int, tenant: str, estimate_s: float | None) -> None:
        """The queue is full: shed its lowest-ranked waiter, or refuse the newcomer if it ranks lowest."""
        victim = queue.victim()
        if victim is None or queue.shed_rank(priority, tenant, self._seq) <= queue.shed_rank(
                victim.priority, victim.tenant, victim.seq):
            self._metrics.admission_shed(queue.name, priority, "queue-full", AdmissionQueueFullError.status)
            raise AdmissionQueueFullError(
                f"the admission queue of pool(s) {queue.name} is full of requests of this priority or higher; "
                "retry later", retry_after_s=self._retry_after_s(estimate_s))
        queue.remove(victim)
        self._left(queue, victim, "shed")
        self._metrics.admission_shed(queue.name, victim.priority, "queue-full", AdmissionQueueFullError.status)
        victim.future.set_exception(AdmissionQueueFullError(
            f"shed from the full admission queue of pool(s) {queue.name} for a request of higher rank; retry later",
            retry_after_s=self._retry_after_s(victim.estimate_s)))

    def _arm(self, queue: _Queue) -> None:
        if queue.timer is None and queue.size:
            queue.timer = asyncio.get_running_loop().call_later(self._recheck_s, self._tick, queue)

    def _tick(self, queue: _Queue) -> None:
        queue.timer = None
        now_s = self._clock()
        for waiter in queue.expired(now_s, self._max_wait_s):
            queue.remove(waiter)
            self._left(queue, waiter, "shed")
            reason = "slo" if waiter.slo_s is not None and now_s >= waiter.arrival_s + waiter.slo_s else "max-wait"
            self._metrics.admission_shed(queue.name, waiter.priority, reason, FleetOverloadedError.status)
            waiter.future.set_exception(FleetOverloadedError(
                f"the fleet behind pool(s) {queue.name} is overloaded: this request could not start within "
                + ("its TTFT SLO" if reason == "slo" else f"{self._max_wait_s:g} s") + "; retry later",
                retry_after_s=self._retry_after_s(waiter.estimate_s)))
        self._pump(queue)
        self._arm(queue)

    def _pump(self, queue: _Queue) -> None:
        """Dispatch the head if it fits now; one at a time (the next pump runs after the dispatched
        request's attempt registered its load)."""
        waiter = queue.head()
        if waiter is None:
            return
        try:
            option = waiter.probe()
        except GatewayError as error:  # e.g. no healthy instance left: the waiter gets the error now
            queue.remove(waiter)
            self._left(queue, waiter, "failed")
            waiter.future.set_exception(error)
            asyncio.get_running_loop().call_soon(self._pump, queue)
            return
        now_s = self._clock()
        waiter.estimate_s = option.estimate_s
        if not _fits(option.estimate_s, queue.guard_s(waiter.priority, waiter.slo_s, now_s), waiter.arrival_s, now_s):
            return
        queue.remove(waiter)
        queue.charge(waiter.tenant, waiter.tokens)
        self._left(queue, waiter, "dispatched")
        waiter.future.set_result(Admitted(option.route, now_s - waiter.enqueued_s))
        if queue.size:
            asyncio.get_running_loop().call_soon(self._pump, queue)

    def _left(self, queue: _Queue, waiter: _Waiter, outcome: str) -> None:
        self._metrics.admission_depth(queue.name, waiter.priority, -1)
        self._metrics.admission_waited(queue.name, waiter.priority, outcome, self._clock() - waiter.enqueued_s)

    def _retry_after_s(self, estimate_s: float | None) -> float:
        """How long the fleet needs to reach a new request, as the router last estimated it."""
        return max(1.0, estimate_s or 0.0)


def _fits(estimate_s: float | None, guard_s: float | None, arrival_s: float, now_s: float) -> bool:
    return estimate_s is None or guard_s is None or now_s - arrival_s + estimate_s <= guard_s
