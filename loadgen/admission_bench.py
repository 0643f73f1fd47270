"""`fleetgate bench admission`: priority and fairness under overload, admission on against off, and the
cost of admission's fast path.

Each run gets a fresh emulated fleet and a bare gateway process in front of it (loadgen/peers.py's
launchers), with a policy whose rules give each tenant (the hash of its API key) its priority and
TTFT SLO. The tenants replay open loop at once, each with its own key; every request ends as a
completion or an HTTP status, and the table counts both, so nothing is lost unseen.

"About 1.5x capacity" is measured, not assumed: a probe first saturates a fresh fleet with a burst of
the scenario's mix (admission off) and reads the tokens/s it serves; the rates are then set so the
mix offers 1.5x that. The interactive tenant sends real ShareGPT chat prompts (the AIBrix trace).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from fleetgate.loadgen.replay import ReplayConfig, RequestResult, replay_trace, run_event_loop
from fleetgate.loadgen.traces import TraceRequest

MODEL = "llama-3.1-8b"
GPU = "l4"
WORDS = ("fleet", "gateway", "token", "prefill", "decode", "tenant", "queue", "batch", "agent", "router")
OVERLOAD = 1.5
"""Offered load at `load` 1.0, as a multiple of the fleet's measured capacity for the scenario's mix."""
PROBE_REQUESTS_PER_INSTANCE = 16


@dataclass(frozen=True, slots=True)
class Tenant:
    """One client of the fleet: its key, class and SLO (written into the policy), its part of the
    offered requests, and its prompts: synthetic ones of `prompt_tokens`, or (None) the chat trace's."""

    name: str
    priority: int
    ttft_slo_ms: float
    share: float  # this tenant's part of the scenario's requests/s
    prompt_tokens: int | None
    output_tokens: int  # synthetic prompts only: chat prompts keep the trace's output length

    @property
    def key(self) -> str:
        return f"bench-{self.name}"


SCENARIOS: dict[str, tuple[Tenant, ...]] = {
    "priority": (Tenant("interactive", 1, 2000.0, 0.7, None, 0),
                 Tenant("batch", -1, 30000.0, 0.3, 3000, 192)),
    "fairness": (Tenant("heavy", 0, 10000.0, 5 / 6, 1500, 128),
                 Tenant("light", 0, 10000.0, 1 / 6, 1500, 128)),
}


@dataclass(frozen=True, slots=True)
class ChatPrompts:
    """The chat trace's prompts that fit the fleet's context (prompt + output), and how many did not."""

    requests: tuple[TraceRequest, ...]
    skipped: int


def chat_prompts(path: Path, max_model_len: int) -> ChatPrompts:
    """Real ShareGPT chat prompts of an AIBrix trace, in timestamp order; a prompt whose prompt + output
    tokens pass `max_model_len` is skipped (vLLM would refuse or cut it)."""
    from fleetgate.loadgen.traces import read_trace

    result = read_trace(path, "aibrix")
    fits = tuple(r for r in result.requests if r.input_tokens + r.output_tokens <= max_model_len)
    return ChatPrompts(fits, len(result.requests) - len(fits))


def _prompts(tenant: Tenant, chat: ChatPrompts, rng: random.Random) -> Iterator[TraceRequest]:
    """The tenant's prompts in sending order, endless: the chat trace from its start, cycling, or
    unique synthetic ones (no prefix sharing: admission, not the cache, is measured)."""
    if tenant.prompt_tokens is None:
        return itertools.cycle(chat.requests)
    length = tenant.prompt_tokens
    return (TraceRequest(0.0, " ".join(rng.choice(WORDS) for _ in range(length)), None, tenant.output_tokens,
                         input_tokens=length) for _ in itertools.count())  # ~1 token a word (4 chars + space)


def tenant_trace(tenant: Tenant, rate_rps: float, duration_s: float, chat: ChatPrompts, seed: int) -> list[TraceRequest]:
    """Poisson arrivals at `rate_rps` for `duration_s`, carrying the tenant's prompts."""
    rng = random.Random(f"{seed}-{tenant.name}")
    prompts = _prompts(tenant, chat, rng)
    out: list[TraceRequest] = []
    at_s = rng.expovariate(rate_rps)
    while at_s < duration_s:
        out.append(replace(next(prompts), arrival_s=at_s))
        at_s += rng.expovariate(rate_rps)
    return out


def mean_tokens(tenants: Sequence[Tenant], chat: ChatPrompts) -> float:
    """Prompt + output tokens of the mix's average request (weighted by the tenants' shares)."""
    def per_request(t: Tenant) -> float:
        if t.prompt_tokens is not None:
            return t.prompt_tokens + t.output_tokens
        return statistics.fmean(r.input_tokens + r.output_tokens for r in chat.requests)

    return sum(t.share * per_request(t) for t in tenants) / sum(t.share for t in tenants)


def probe_burst(tenants: Sequence[Tenant], count: int, chat: ChatPrompts, seed: int) -> list[list[TraceRequest]]:
    """`count` requests of the mix, all sent at once (the fleet saturated), split by the tenants' shares."""
    total = sum(t.share for t in tenants)
    out = []
    for tenant in tenants:
        prompts = _prompts(tenant, chat, random.Random(f"probe-{seed}-{tenant.name}"))
        out.append([next(prompts) for _ in range(max(1, round(count * tenant.share / total)))])
    return out


def served_tokens_per_s(results: Sequence[RequestResult]) -> float:
    """Prompt + completion tokens/s served while the fleet was saturated: over the completions
    between the 10th and the 90th percentile of finish times (the ramp and the drain left out)."""
    ends = sorted((r.sent_s + r.e2e_ms / 1e3, (r.prompt_tokens or r.input_tokens) + (r.completion_tokens or 0))
                  for r in results if r.error is None and r.sent_s is not None and r.e2e_ms is not None)
    if len(ends) < 4:
        raise RuntimeError(f"the capacity probe completed only {len(ends)} requests; see the gateway log")
    low, high = len(ends) // 10, len(ends) - 1 - len(ends) // 10
    return sum(tokens for _, tokens in ends[low + 1:high + 1]) / (ends[high][0] - ends[low][0])


def policy_text(tenants: Sequence[Tenant]) -> str:
    from fleetgate.router.ingress import tenant_of

    rules = "".join(
        f"  - name: {t.name}\n    match: {{tenant: [{tenant_of({'authorization': f'Bearer {t.key}'})}]}}\n"
        f"    ttft_slo_ms: {t.ttft_slo_ms:g}\n    priority: {t.priority}\n    cache: 'off'\n" for t in tenants)
    return f"version: 1\nrules:\n{rules}defaults:\n  router: dualmap\n  cache: 'off'\n"


def tenant_row(tenant: Tenant, results: list[RequestResult], wall_s: float) -> dict[str, Any]:
    done = [r for r in results if r.error is None]
    statuses: dict[str, int] = {}
    for r in results:
        if r.error is not None:
            key = str(r.status) if r.status else r.error
            statuses[key] = statuses.get(key, 0) + 1
    met = sum(1 for r in done if r.ttft_ms is not None and r.ttft_ms <= tenant.ttft_slo_ms)
    served = sum(r.completion_tokens or 0 for r in done)
    ttfts = sorted(r.ttft_ms for r in done if r.ttft_ms is not None)
    return {
        "tenant": tenant.name, "sent": len(results), "completed": len(done), "failed": statuses,
        "slo_met": met / len(results) if results else 0.0,
        "ttft_p50_ms": ttfts[len(ttfts) // 2] if ttfts else None,
        "ttft_p99_ms": ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.99))] if ttfts else None,
        "served_tokens": served, "goodput_tok_s": served / wall_s if wall_s else 0.0,
        "offered_tokens": sum(r.requested_tokens for r in results),
    }  # fmt: skip


async def _replay_tenants(url: str, tenants: Sequence[Tenant], traces: Sequence[list[TraceRequest]],
                          timeout_s: float) -> tuple[list[list[RequestResult]], float]:
    started = time.monotonic()
    outcomes = await asyncio.wait_for(asyncio.gather(*(
        replay_trace(trace, ReplayConfig(target=url, model=MODEL, request_timeout_s=timeout_s,
                                         headers=(("authorization", f"Bearer {t.key}"),)), progress=False)
        for t, trace in zip(tenants, traces))), timeout_s)
    return [o.results for o in outcomes], time.monotonic() - started


def _replay_on_fresh_fleet(tenants: Sequence[Tenant], traces: Sequence[list[TraceRequest]], *, admission: bool,
                           instances: int, out_dir: Path, timeout_s: float) -> tuple[list[list[RequestResult]], float]:
    """A fresh fleet and a bare gateway (admission on or off); the tenants' traces replayed at once."""
    from fleetgate.loadgen.peers import free_port, router_process, wait_router_ready
    from fleetgate.pools.config import dump_fleet, fleet_from_pools
    from fleetgate.pools.emulator.launcher import fleet_subprocess
    from fleetgate.pools.emulator.local import EmulatedPoolSpec

    out_dir.mkdir(parents=True, exist_ok=True)
    with fleet_subprocess([EmulatedPoolSpec("chat", MODEL, GPU, instances)]) as fleet:
        (out_dir / "fleet.yaml").write_text(dump_fleet(fleet_from_pools(fleet.to_pools())))
        (out_dir / "policy.yaml").write_text(policy_text(tenants))
        port = free_port()
        argv = [sys.executable, "-m", "fleetgate.app.cli", "serve", "--bare", "--fleet", str(out_dir / "fleet.yaml"),
                "--policy", str(out_dir / "policy.yaml"), "--no-semantic-cache", "--host", "127.0.0.1",
                "--port", str(port), *(["--admission"] if admission else [])]
        url = f"http://127.0.0.1:{port}"
        with router_process(argv, out_dir / "gateway.log") as process:
            wait_router_ready(url, process, len(fleet.urls), 300.0, out_dir / "gateway.log")
            return run_event_loop(lambda: _replay_tenants(url, tenants, traces, timeout_s))


@dataclass(frozen=True, slots=True)
class Load:
    """The fleet's measured capacity for a scenario's mix and the rates that offer `ratio` times it."""

    capacity_tok_s: float  # prompt + completion tokens/s served when saturated, admission off
    mean_tokens: float  # prompt + output tokens of the mix's average request
    ratio: float  # offered / capacity
    rates_rps: tuple[float, ...]  # per tenant

    @property
    def offered_tok_s(self) -> float:
        return sum(self.rates_rps) * self.mean_tokens


def measure_load(tenants: Sequence[Tenant], *, load: float, chat: ChatPrompts, instances: int, out_dir: Path,
                 seed: int, timeout_s: float) -> Load:
    """Probe the fleet's capacity for this mix (a burst that saturates a fresh fleet, admission off), then
    set each tenant's rate so the mix offers OVERLOAD x `load` times it."""
    burst = probe_burst(tenants, PROBE_REQUESTS_PER_INSTANCE * instances, chat, seed)
    results, _ = _replay_on_fresh_fleet(tenants, burst, admission=False, instances=instances, out_dir=out_dir,
                                        timeout_s=timeout_s)
    capacity = served_tokens_per_s([r for per_tenant in results for r in per_tenant])
    mean = mean_tokens(tenants, chat)
    total_rps = OVERLOAD * load * capacity / mean
    shares = sum(t.share for t in tenants)
    return Load(capacity, mean, OVERLOAD * load, tuple(total_rps * t.share / shares for t in tenants))


def run_scenario(tenants: Sequence[Tenant], rates_rps: Sequence[float], *, admission: bool, duration_s: float,
                 chat: ChatPrompts, instances: int, out_dir: Path, seed: int, timeout_s: float) -> list[dict[str, Any]]:
    """A fresh fleet, a gateway (admission on or off), the tenants replayed at once: one row per tenant."""
    traces = [tenant_trace(t, rate, duration_s, chat, seed) for t, rate in zip(tenants, rates_rps)]
    results, wall_s = _replay_on_fresh_fleet(tenants, traces, admission=admission, instances=instances,
                                             out_dir=out_dir, timeout_s=timeout_s)
    return [tenant_row(t, r, wall_s) for t, r in zip(tenants, results)]


def fast_path_us(runs: int = 5, calls: int = 20000) -> tuple[float, float]:
    """Median over `runs` of the p50 and p99 cost (µs) of one admission with nothing waiting (the
    probe itself, i.e. routing, excluded: it is routing's cost, paid with or without admission)."""
    from fleetgate.router.admission import Admission, Option
    from fleetgate.router.metrics import GatewayMetrics

    async def one_run() -> tuple[float, float]:
        from prometheus_client import CollectorRegistry

        admission = Admission(queue_size=1024, recheck_s=0.05, max_wait_s=60.0,
                              metrics=GatewayMetrics(CollectorRegistry()))
        option = Option("route", 0.5)
        probe = lambda: option  # noqa: E731 - the cheapest probe: what is timed is admission's own work
        pools, costs = ("chat",), []
        clock = time.perf_counter_ns
        for i in range(calls):
            started = clock()
            await admission.admit(pools, tenant=f"t{i % 8}", priority=i % 3 - 1, tokens=500, slo_s=2.0,
                                  arrival_s=time.monotonic(), probe=probe)
            costs.append((clock() - started) / 1000)
        costs.sort()
        return costs[len(costs) // 2], costs[int(len(costs) * 0.99)]

    samples = [asyncio.run(one_run()) for _ in range(runs)]
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)
