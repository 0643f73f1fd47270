"""`fleetgate bench chaos`: a bounded slice of a real trace through Ray Serve while one thing breaks.

One stack (loadgen/chaos_stack.py: emulated instances each in its own process, Redis, a gateway with
two Ray Serve replicas, the files it watches) serves every scenario in turn; between scenarios every
fault is undone and the gateway must report the whole fleet healthy again. A scenario replays its
own window of the trace (open loop, time-compressed by `rate_scale`), injects its fault `pre_s`
after the start, undoes it `fault_s` later and keeps sending for `post_s`; loadgen/chaos_report.py
turns the requests into the figures (failed, cut and where, avoidable failures, recovery).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetgate.core.clock import monotonic_clock
from fleetgate.loadgen.chaos_report import FaultSpan, analyse
from fleetgate.loadgen.chaos_stack import BROKEN_POLICY, MODEL, Stack, StackConfig
from fleetgate.loadgen.replay import Replayer, ReplayConfig, RequestResult, make_session, replay_trace, schedule
from fleetgate.loadgen.report import write_results
from fleetgate.loadgen.traces import TraceRequest
from fleetgate.pools.emulator.launcher import wait_healthy

RECOVERY_GOAL_S = 5.0
WARM_UP_REQUESTS = 20


@dataclass(frozen=True, slots=True)
class Scenario:
    """A fault: `inject` starts it and names what broke (None: nothing that may cut a stream), `heal` ends it."""

    name: str
    checks: str
    inject: Callable[[Stack], str | None]
    heal: Callable[[Stack], None]
    fault_s: float = 4.0
    place: str = "instance"  # what `inject` names: an instance, or a gateway replica
    heal_s: float = 0.0  # how long `heal` itself may take (a replica starting): the load runs that much longer


def _fault(index: int, mode: str) -> Callable[[Stack], str]:
    def inject(stack: Stack) -> str:
        stack.instances[index].set_fault(mode)
        return stack.instances[index].name
    return inject


def _healed(index: int) -> Callable[[Stack], None]:
    return lambda stack: stack.instances[index].set_fault("ok")


def _kill(stack: Stack) -> str:
    stack.instances[0].kill()
    return stack.instances[0].name


def _kill_redis(stack: Stack) -> None:
    stack.redis.stop()


def _kill_replica(stack: Stack) -> None:
    stack.kill_replica()  # which replica it was is read from the answers afterwards (`_killed_replica`)


def _broken_policy(stack: Stack) -> None:
    stack.write_policy(BROKEN_POLICY)


def _grow_fleet(stack: Stack) -> None:
    stack.write_fleet([*stack.instances, stack.spare])


SCENARIOS = (
    Scenario("instance-killed", "an instance SIGKILLed, then started again on the same port: only its own open "
             "streams are cut, requests it refuses go elsewhere", _kill, lambda s: s.instances[0].launch()),
    Scenario("instance-hang", "an instance accepts requests but never sends a first byte: each is retried "
             "elsewhere after the first-byte timeout, and the instance is ejected", _fault(1, "hang"), _healed(1)),
    Scenario("instance-slow", "an instance 10x slower (a latency outlier): answers are late, none fails",
             _fault(2, "slow:10"), _healed(2), fault_s=6.0),
    Scenario("instance-503-retry-after", "an instance answers 503 with Retry-After: 10 for 10 s: the gateway "
             "backs off it for that long and retries elsewhere", _fault(0, "retry-after:10"), _healed(0),
             fault_s=10.0),
    Scenario("instance-reset", "an instance resets every connection after the first chunk: only streams on it "
             "are cut, and it is ejected", _fault(1, "reset"), _healed(1)),
    Scenario("redis-killed", "Redis SIGKILLed, then restarted (semantic cache and rate limits on): a cache "
             "miss and open limits, no failure", _kill_redis, lambda s: s.redis.start()),
    Scenario("replica-killed", "one of the two gateway replicas SIGKILLed; the fault lasts until the replica "
             "Ray Serve starts instead answers: only streams on the killed one are cut", _kill_replica,
             lambda s: s.wait_new_replica(), fault_s=0.0, place="replica", heal_s=40.0),
    Scenario("policy-broken", "the policy file replaced by one that is not YAML, then by a good one: the "
             "gateway keeps its policy", _broken_policy, lambda s: s.write_policy()),
    Scenario("fleet-changed", "an instance added to the watched fleet file, then removed: it takes traffic, "
             "and its open streams finish", _grow_fleet, lambda s: s.write_fleet(s.instances)),
)
SCENARIO_NAMES = tuple(s.name for s in SCENARIOS)


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    stack: StackConfig
    windows: Sequence[Sequence[TraceRequest]]  # one trace window per scenario, first arrival at 0
    warm_up: Sequence[TraceRequest]  # sent first and not counted; none of the windows' prompts (no cache hits)
    rate_scale: float  # trace time per wall second
    pre_s: float = 4.0
    post_s: float = 7.0
    out_dir: Path = Path("runs/chaos")


def span_s(scenario: Scenario, pre_s: float, post_s: float) -> float:
    """Wall seconds of load a scenario needs: before, during and after its fault."""
    return pre_s + scenario.fault_s + scenario.heal_s + post_s


async def _drive(stack: Stack, scenario: Scenario, start_s: float, pre_s: float) -> FaultSpan:
    """Inject at `pre_s`, heal `fault_s` later; the span in seconds from `start_s` (the replay's start)."""
    clock = monotonic_clock
    await asyncio.sleep(max(0.0, start_s + pre_s - clock()))
    broken = await asyncio.to_thread(scenario.inject, stack)
    began_s = clock() - start_s  # once done: a request sent before it may have reached what broke
    await asyncio.sleep(max(0.0, start_s + began_s + scenario.fault_s - clock()))
    await asyncio.to_thread(scenario.heal, stack)
    return FaultSpan(began_s, clock() - start_s, broken, scenario.place)


async def replay_with_fault(stack: Stack, scenario: Scenario, requests: Sequence[TraceRequest], config: ChaosConfig
                            ) -> tuple[list[RequestResult], FaultSpan]:
    """The window replayed open loop through the gateway while the fault is driven on the same clock."""
    limit_s = span_s(scenario, config.pre_s, config.post_s) + 60.0
    replay = ReplayConfig(target=stack.url, model=MODEL, rate_scale=config.rate_scale, request_timeout_s=limit_s,
                          headers=stack.auth_headers())
    async with make_session(replay) as session:
        replayer = Replayer(replay, session, clock=monotonic_clock)
        plan = schedule(list(requests), replay)
        start_s = monotonic_clock() + replay.start_delay_s  # what `run` counts its send times from
        fault = asyncio.create_task(_drive(stack, scenario, start_s, config.pre_s))
        stop = asyncio.Event()
        timer = asyncio.get_running_loop().call_later(limit_s, stop.set)
        try:
            results = await replayer.run(plan, stop)
        finally:
            timer.cancel()
        return results, await fault


def _killed_replica(results: Sequence[RequestResult], span: FaultSpan) -> str | None:
    """The replica that answered before the kill and never after it (a restarted replica has a new id)."""
    before = {r.replica for r in results if r.sent_s is not None and r.sent_s < span.start_s and r.replica}
    after = {r.replica for r in results if r.sent_s is not None and r.sent_s > span.end_s + 1.0 and r.replica}
    gone = sorted(before - after)
    return gone[0] if len(gone) == 1 else None


def run_scenario(stack: Stack, scenario: Scenario, requests: Sequence[TraceRequest], config: ChaosConfig
                 ) -> dict[str, Any]:
    """One scenario on the running stack; the stack is back to normal (and settled) when it returns."""
    try:
        results, span = asyncio.run(replay_with_fault(stack, scenario, requests, config))
    finally:
        restore(stack)
    if scenario.place == "replica":
        span = dataclasses.replace(span, broken=_killed_replica(results, span))
    (config.out_dir / scenario.name).mkdir(parents=True, exist_ok=True)
    write_results(config.out_dir / scenario.name, results)
    row = analyse(results, span, config.stack.ttft_slo_ms)
    return {"scenario": scenario.name, "checks": scenario.checks, "place": scenario.place, **row}


def restore(stack: Stack) -> None:
    """Undo whatever a scenario may have left: every instance up without faults, Redis up, the files good."""
    for instance in stack.instances:
        if not instance.running:
            instance.launch()
    wait_healthy([instance.url for instance in stack.instances], 120.0)  # a restarted one may still be starting
    for instance in stack.instances:
        instance.set_fault("ok")
    if not stack.redis.running:
        stack.redis.start()
    stack.write_policy()
    stack.write_fleet(stack.instances)
    stack.wait_settled()


async def _warm_up(stack: Stack, requests: Sequence[TraceRequest]) -> None:
    """A few requests first, uncounted: the first answers of a fresh deployment (the embedder's first
    batches, new connections) are slow for reasons no scenario is about."""
    await replay_trace(list(requests), ReplayConfig(target=stack.url, model=MODEL, rate_scale=4.0,
                                                    headers=stack.auth_headers()), progress=False)


def run_chaos(scenarios: Sequence[Scenario], config: ChaosConfig, *,
              on_row: Callable[[dict[str, Any]], None] = lambda _row: None) -> list[dict[str, Any]]:
    """Start the stack once, run each scenario on its own trace window, stop the stack."""
    config.out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with Stack(config.stack, config.out_dir).running() as stack:
        asyncio.run(_warm_up(stack, config.warm_up))
        for scenario, window in zip(scenarios, config.windows):
            try:
                row = run_scenario(stack, scenario, window, config)
            except (RuntimeError, TimeoutError, OSError) as error:  # the stack did not come back
                row = {"scenario": scenario.name, "error": f"{type(error).__name__}: {error}"[:300]}
            rows.append(row)
            on_row(row)
        proxy = stack.proxy()
    write_rows(config, rows, proxy)
    return rows


def verdicts(row: dict[str, Any]) -> list[str]:
    """The issue's goals this row misses (empty: all met)."""
    if "error" in row:
        return [row["error"]]
    misses = []
    if row["avoidable_failures"]:
        misses.append(f"{row['avoidable_failures']} avoidable failures {row['failed_by_status']}")
    if row["cut_elsewhere"]:
        misses.append(f"cuts away from what broke ({row['broken']}): {row['cut_at']}")
    if row["recovery_s"] is None or row["recovery_s"] > RECOVERY_GOAL_S:
        misses.append(f"SLO attainment not back within {RECOVERY_GOAL_S:g} s of the fault's end")
    return misses


def write_rows(config: ChaosConfig, rows: Sequence[dict[str, Any]], proxy: str) -> Path:
    path = config.out_dir / "results.json"
    setup = {"instances": config.stack.instances, "gpu": config.stack.gpu, "replicas": config.stack.replicas,
             "time_scale": config.stack.time_scale, "ttft_slo_ms": config.stack.ttft_slo_ms,
             "rate_scale": config.rate_scale, "pre_s": config.pre_s, "post_s": config.post_s, "proxy": proxy}
    path.write_text(json.dumps({"setup": setup, "scenarios": list(rows)}, indent=2) + "\n", encoding="utf-8")
    return path
