"""Discrete-event simulator: the real router objects against emulated vLLM engines, in virtual time.

One run replays a trace (arrivals compressed by `rate_scale`) through one router over `instances`
engines (fleetgate.pools.emulator.engine.Engine). Events sit in a heap: arrivals, the end of each engine's
current step, and metric scrapes. As in the gateway, the router sees each instance through an
`InstanceView`: vLLM's waiting/running/kv-usage as last scraped (every `scrape_interval_s`,
so it is up to half a second stale) plus this router's exact local in-flight counts; it is told
of dispatches, first tokens and finishes through its hooks. A router with a `resend` method
(DualMap) is asked at every scrape whether requests still without a first token should move.

Precise mode (router name `<router>+precise`, e.g. `dualmap+precise`): each view also carries
`kv`, the engine's own prefix cache read at decision time (what KV events would tell the gateway,
with no event delay), and each RouteRequest carries the engine's block hashes (`kv_hashes`).
`oracle` (loadgen/oracle.py) reads every engine's exact cache and queue: the upper reference.

Preparing a trace (rendering prompts, hashing KV and routing blocks) costs more than a run, so it
is done once (`prepare`) and shared by every run of a capacity search or a router comparison.
Requests whose prompt does not fit the instances' max_model_len are rejected up front, as vLLM
answers 400; they are counted (`rejected`) and left out of every latency and SLO figure.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable, Protocol, Sequence, cast

from fleetgate.core.defaults import DEFAULT_GPU, DEFAULT_KEY_BLOCKS, DEFAULT_TTFT_SLO_MS
from fleetgate.core.prefix import prefix_hashes, render_chat
from fleetgate.core.tokens import KV_BLOCK_TOKENS, count_tokens, kv_block_hashes
from fleetgate.loadgen.oracle import ORACLE, ExactEngine, Oracle
from fleetgate.loadgen.traces import TraceRequest
from fleetgate.pools.emulator.engine import (
    Engine,
    EngineRequest,
    EngineStats,
    RequestStats,
    StepOutput,
)
from fleetgate.pools.model import Endpoint
from fleetgate.pools.profiles import GpuProfile, get_profile
from fleetgate.router.routing.base import InstanceView, KvView, Router, RouteRequest, resends
from fleetgate.router.routing.registry import ROUTER_NAMES, make_router

log = logging.getLogger("fleetgate.loadgen.simulate")

FALLBACK_REASONS = frozenset({"slo-fallback", "imbalanced", "bounded-load"})
"""Decision reasons meaning "affinity was dropped for load" (DualMap, cache-aware, consistent-hash)."""

PRECISE_SUFFIX = "+precise"
SIM_ROUTER_NAMES: tuple[str, ...] = (*ROUTER_NAMES, *(n + PRECISE_SUFFIX for n in ROUTER_NAMES), ORACLE)
"""Every router name the simulator runs: the registry's, each in precise mode, and the oracle."""


def split_router_name(name: str) -> tuple[str, bool]:
    """(registry router name or "oracle", precise mode?) for a simulator router name."""
    if name not in SIM_ROUTER_NAMES:
        raise ValueError(f"unknown router {name!r}; known: {', '.join(SIM_ROUTER_NAMES)}")
    if name.endswith(PRECISE_SUFFIX):
        return name[: -len(PRECISE_SUFFIX)], True
    return name, name == ORACLE


@dataclass(frozen=True, slots=True)
class SimRequest:
    """A trace request with its hashes computed once, ready to replay at any rate."""

    request_id: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    kv_hashes: tuple[int, ...]
    prefix_hashes: tuple[int, ...]
    session_id: str | None = None


def prepare(requests: Iterable[TraceRequest]) -> list[SimRequest]:
    """Render and hash every request once (the expensive part of a simulation)."""
    prepared = []
    for index, req in enumerate(requests):
        text = req.prompt if req.prompt is not None else render_chat(req.messages or ())
        tokens = req.input_tokens or count_tokens(text)
        prepared.append(
            SimRequest(
                f"r{index}", req.arrival_s, max(1, tokens), max(1, req.output_tokens),
                tuple(kv_block_hashes(text)), prefix_hashes(text), req.session_id,
            )
        )
    return prepared


class EngineLike(Protocol):
    max_model_len: int

    def add(self, request: EngineRequest) -> None: ...
    def abort(self, request_id: str, now_s: float | None = None) -> RequestStats | None: ...
    def has_work(self) -> bool: ...
    def step(self, now_s: float) -> StepOutput: ...
    def stats(self) -> EngineStats: ...


EngineFactory = Callable[[GpuProfile], EngineLike]


@dataclass(frozen=True, slots=True)
class SimConfig:
    router: str
    instances: int
    gpu: str = DEFAULT_GPU
    ttft_slo_s: float = DEFAULT_TTFT_SLO_MS / 1000
    rate_scale: float = 1.0
    seed: int = 0
    scrape_interval_s: float = 0.5
    key_blocks: int = DEFAULT_KEY_BLOCKS
    kv_cache_tokens: int | None = None  # override the profile's KV cache size (None: the profile's)
    gpu_profile: GpuProfile | None = None  # a fleet file's custom profile called `gpu` (None: the built-in one)
    router_params: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class SimResult:
    router: str
    requests: int  # served (rejected ones excluded)
    rejected: int
    rate_scale: float
    request_rate_rps: float
    ttft_p50_ms: float
    ttft_p90_ms: float
    ttft_p99_ms: float
    tpot_p50_ms: float
    slo_attainment: float
    goodput_rps: float  # requests served within the TTFT SLO per second of arrivals
    prefix_hit_ratio: float
    load_imbalance: float
    utilization: float  # mean busy share of the instances over the run
    fallback_ratio: float
    resent: int
    preemptions: int
    virtual_s: float
    reasons: dict[str, int] = field(default_factory=dict)
    # |observed - estimated| TTFT, for routers that estimate it (DualMap); None for the others
    ttft_estimate_error_p50_ms: float | None = None
    ttft_estimate_error_p90_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def ideal_prefix_hit_ratio(requests: Sequence[SimRequest], max_model_len: int, cache_tokens: int | None = None) -> float:
    """Cached prompt tokens / prompt tokens if the whole fleet were one prefix cache: unlimited
    (`cache_tokens` None: the most any router could reach, each request hitting every block an
    earlier request wrote) or one LRU cache of `cache_tokens` (the fleet's KV memory pooled with
    no copies and nothing held by running requests: what a perfect router could hope for). The
    last prompt token is always recomputed, as vLLM does."""
    seen: OrderedDict[int, None] = OrderedDict()
    capacity = cache_tokens // KV_BLOCK_TOKENS if cache_tokens is not None else None
    hits = total = 0
    for req in requests:
        if req.prompt_tokens >= max_model_len:
            continue
        limit = (req.prompt_tokens - 1) // KV_BLOCK_TOKENS
        matched = 0
        for h in req.kv_hashes[:limit]:
            if h not in seen:
                break
            matched += 1
        hits += matched * KV_BLOCK_TOKENS
        total += req.prompt_tokens
        for h in reversed(req.kv_hashes):  # leaf first: a prefix outlives its extensions
            seen[h] = None
            seen.move_to_end(h)
        if capacity is not None:
            while len(seen) > capacity:
                seen.popitem(last=False)
    return hits / total if total else 0.0


_STEP_END, _SCRAPE, _ARRIVE = 0, 1, 2  # event kinds; at equal times engine effects land first


class EngineKv:
    """Precise mode's KvView: the engine's own prefix cache, read at decision time (no event delay)."""

    __slots__ = ("engine",)
    live = True
    block_tokens = KV_BLOCK_TOKENS

    def __init__(self, engine: ExactEngine) -> None:
        self.engine = engine

    def matched_blocks(self, kv_hashes: Sequence[int]) -> int:
        return self.engine.matched_blocks(tuple(kv_hashes))


class _Instance:
    """One engine plus what the router-side bookkeeping knows about it."""

    __slots__ = (
        "endpoint", "profile", "engine", "kv", "output", "step_end_s", "busy_s", "inflight", "queued", "queued_tokens", "scraped",
    )

    def __init__(self, endpoint: Endpoint, profile: GpuProfile, engine: EngineLike, kv: KvView | None) -> None:
        self.endpoint = endpoint
        self.profile = profile
        self.engine = engine
        self.kv = kv  # precise mode only
        self.output: StepOutput | None = None  # the step in flight, if any
        self.step_end_s = 0.0  # when the step in flight ends
        self.busy_s = 0.0
        self.inflight = 0
        self.queued: dict[str, RouteRequest] = {}  # dispatched, no first token yet
        self.queued_tokens = 0
        self.scraped: tuple[int, int, float, float | None] = (0, 0, 0.0, None)  # waiting, running, kv usage, when

    def view(self) -> InstanceView:
        waiting, running, kv, scraped_at_s = self.scraped
        return InstanceView(self.endpoint, self.profile, waiting, running, kv, self.inflight, self.queued_tokens,
                            scraped_at_s=scraped_at_s, kv=self.kv)


class Simulation:
    """One run; `run()` returns the SimResult (see the module docstring)."""

    def __init__(self, requests: Sequence[SimRequest], config: SimConfig, engine_factory: EngineFactory | None = None) -> None:
        self.requests = requests
        self.config = config
        profile = config.gpu_profile or get_profile(config.gpu)
        factory = engine_factory or (lambda p: Engine(p, kv_cache_tokens=config.kv_cache_tokens))
        base, self.precise = split_router_name(config.router)
        self.instances = []
        for i in range(config.instances):
            engine = factory(profile)
            kv = EngineKv(cast(ExactEngine, engine)) if self.precise else None
            endpoint = Endpoint(f"{profile.name}-{i}", f"sim://{i}", "sim", "sim", profile.name, gpu_profile=config.gpu_profile)
            self.instances.append(_Instance(endpoint, profile, engine, kv))
        self.by_name = {inst.endpoint.name: inst for inst in self.instances}
        params = dict(config.router_params)
        if base == "power-of-two":
            params.setdefault("seed", config.seed)
        self.router: Router = Oracle(self.by_name, **params) if base == ORACLE else make_router(base, **params)  # type: ignore[arg-type]
        self._resender = self.router if resends(self.router) else None
        self._events: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._route_requests: dict[str, RouteRequest] = {}
        self._sim: dict[str, SimRequest] = {}
        self.finished: list[RequestStats] = []
        self.reasons: Counter[str] = Counter()
        self.rejected = 0
        self.resent = 0
        self._estimated_ttft_s: dict[str, float] = {}  # request id -> the router's TTFT estimate, from arrival
        self._last_effect_s = 0.0

    def _push(self, time_s: float, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (time_s, kind, self._seq, payload))

    def run(self) -> SimResult:
        scale = self.config.rate_scale
        max_len = min(inst.engine.max_model_len for inst in self.instances)
        for req in self.requests:
            if req.prompt_tokens >= max_len:
                self.rejected += 1
            else:
                self._push(req.arrival_s / scale, _ARRIVE, req)
        pending_arrivals = len(self._events)
        if pending_arrivals:
            self._push(0.0, _SCRAPE, None)
        events = self._events
        while events:
            now, kind, _, payload = heapq.heappop(events)
            if kind == _STEP_END:
                self._step_end(payload, now)
            elif kind == _ARRIVE:
                pending_arrivals -= 1
                self._arrive(payload, now)
            else:
                self._scrape(now)
                if pending_arrivals or any(inst.output is not None for inst in self.instances):
                    self._push(now + self.config.scrape_interval_s, _SCRAPE, None)
        return self._result(self._last_effect_s)

    # -- events -----------------------------------------------------------------------------

    def _arrive(self, req: SimRequest, now: float) -> None:
        route_request = RouteRequest(
            req.request_id, req.prefix_hashes, req.prompt_tokens, req.output_tokens, req.session_id,
            self.config.ttft_slo_s, self.config.key_blocks, kv_hashes=req.kv_hashes if self.precise else (),
        )
        self._route_requests[req.request_id] = route_request
        self._sim[req.request_id] = req
        decision = self.router.route(route_request, [inst.view() for inst in self.instances], now)
        self.reasons[decision.reason] += 1
        if decision.estimated_ttft_s is not None:
            self._estimated_ttft_s[req.request_id] = decision.estimated_ttft_s
        self._dispatch(route_request, self.by_name[decision.chosen.name], now)

    def _dispatch(self, request: RouteRequest, inst: _Instance, now: float) -> None:
        sim = self._sim[request.request_id]
        inst.engine.add(EngineRequest(sim.request_id, sim.kv_hashes, sim.prompt_tokens, sim.output_tokens, sim.arrival_s / self.config.rate_scale))
        inst.inflight += 1
        inst.queued[request.request_id] = request
        inst.queued_tokens += request.prompt_tokens
        self.router.on_dispatch(request, inst.endpoint, now)
        if inst.output is None:
            self._start_step(inst, now)

    def _start_step(self, inst: _Instance, now: float) -> None:
        output = inst.engine.step(now)
        if output.duration_s <= 0:
            raise RuntimeError(f"{inst.endpoint.name}: a step with work took no time")
        inst.output = output
        inst.step_end_s = now + output.duration_s
        inst.busy_s += output.duration_s
        self._push(now + output.duration_s, _STEP_END, inst)

    def _step_end(self, inst: _Instance, now: float) -> None:
        output = inst.output
        inst.output = None
        self._last_effect_s = now
        router, queued = self.router, inst.queued
        if queued:
            for request_id in output.new_tokens:
                request = queued.pop(request_id, None)
                if request is not None:
                    inst.queued_tokens -= request.prompt_tokens
                    router.on_first_token(request, inst.endpoint, now)
        for stats in output.finished:
            inst.inflight -= 1
            self.finished.append(stats)
            request = self._route_requests.pop(stats.request_id)
            del self._sim[stats.request_id]
            router.on_finish(request, inst.endpoint, now, True)
        if inst.engine.has_work():
            self._start_step(inst, now)

    def _scrape(self, now: float) -> None:
        for inst in self.instances:
            stats = inst.engine.stats()
            inst.scraped = (stats.waiting, stats.running, stats.kv_usage_ratio, now)
        if self._resender is not None:
            self._consider_resends(now)

    def _consider_resends(self, now: float) -> None:
        views = [inst.view() for inst in self.instances]
        for inst in self.instances:
            stepping = inst.output.new_tokens if inst.output is not None else {}
            for request_id, request in list(inst.queued.items()):
                if request_id in stepping:
                    continue  # its first token is already on its way
                decision = self._resender.resend(request, inst.endpoint, views, now)
                if decision is None:
                    continue
                if inst.engine.abort(request_id, now) is None:
                    continue
                inst.inflight -= 1
                del inst.queued[request_id]
                inst.queued_tokens -= request.prompt_tokens
                self.router.on_finish(request, inst.endpoint, now, False)
                self.reasons["resend"] += 1
                self.resent += 1
                if decision.estimated_ttft_s is not None:
                    arrival_s = self._sim[request_id].arrival_s / self.config.rate_scale
                    self._estimated_ttft_s[request_id] = now - arrival_s + decision.estimated_ttft_s
                self._dispatch(request, self.by_name[decision.chosen.name], now)
                views = [i.view() for i in self.instances]

    # -- results ----------------------------------------------------------------------------

    def _estimate_error(self, done: Sequence[RequestStats]) -> dict[str, float]:
        estimated = self._estimated_ttft_s
        errors = sorted(abs(s.ttft_s - estimated[s.request_id]) for s in done if s.request_id in estimated)
        if not errors:
            return {}
        return {"ttft_estimate_error_p50_ms": percentile(errors, 50) * 1e3,
                "ttft_estimate_error_p90_ms": percentile(errors, 90) * 1e3}

    def _result(self, end_s: float) -> SimResult:
        done = [s for s in self.finished if s.first_token_s is not None]
        ttfts = sorted(s.ttft_s for s in done)
        tpots = sorted(s.tpot_s for s in done if s.output_tokens > 1)
        slo = self.config.ttft_slo_s
        prompt = sum(s.prompt_tokens for s in done)
        busy = [inst.busy_s for inst in self.instances]
        mean_busy = sum(busy) / len(busy)
        decisions = sum(v for k, v in self.reasons.items() if k != "resend")
        span_s = (self.requests[-1].arrival_s - self.requests[0].arrival_s) / self.config.rate_scale if self.requests else 0.0
        return SimResult(
            router=self.config.router,
            requests=len(done),
            rejected=self.rejected,
            rate_scale=self.config.rate_scale,
            request_rate_rps=len(self.requests) / span_s if span_s > 0 else 0.0,
            ttft_p50_ms=percentile(ttfts, 50) * 1e3,
            ttft_p90_ms=percentile(ttfts, 90) * 1e3,
            ttft_p99_ms=percentile(ttfts, 99) * 1e3,
            tpot_p50_ms=percentile(tpots, 50) * 1e3,
            slo_attainment=sum(t <= slo for t in ttfts) / len(ttfts) if ttfts else 0.0,
            goodput_rps=sum(t <= slo for t in ttfts) / span_s if span_s > 0 else 0.0,
            prefix_hit_ratio=sum(s.cached_tokens for s in done) / prompt if prompt else 0.0,
            load_imbalance=max(busy) / mean_busy if mean_busy > 0 else 1.0,
            utilization=mean_busy / end_s if end_s > 0 else 0.0,
            fallback_ratio=sum(v for k, v in self.reasons.items() if k in FALLBACK_REASONS) / decisions if decisions else 0.0,
            resent=self.resent,
            preemptions=sum(s.preemptions for s in done),
            virtual_s=end_s,
            reasons=dict(sorted(self.reasons.items())),
            **self._estimate_error(done),
        )


def simulate(requests: Sequence[SimRequest], config: SimConfig, engine_factory: EngineFactory | None = None) -> SimResult:
    return Simulation(requests, config, engine_factory).run()


@dataclass(frozen=True)
class Capacity:
    capacity_rps: float
    rate_scale: float
    result: SimResult  # the run at the capacity rate
    runs: int


def find_capacity(
    requests: Sequence[SimRequest],
    config: SimConfig,
    *,
    target_attainment: float = 0.9,
    tolerance: float = 0.05,
    max_runs: int = 24,
    on_run: Callable[[SimResult], None] | None = None,
    engine_factory: EngineFactory | None = None,
) -> Capacity:
    """The highest rate (by bisection on rate_scale, to within `tolerance`) at which at least
    `target_attainment` of requests meet the TTFT SLO. 0 when even the slowest tried rate fails."""
    runs = 0

    def attempt(scale: float) -> SimResult:
        nonlocal runs
        runs += 1
        result = simulate(requests, replace(config, rate_scale=scale), engine_factory)
        if on_run is not None:
            on_run(result)
        return result

    def ok(result: SimResult) -> bool:
        return result.slo_attainment >= target_attainment

    scale = config.rate_scale
    result = attempt(scale)
    good: tuple[float, SimResult] | None = None
    bad: float | None = None
    if ok(result):
        good = (scale, result)
        while runs < max_runs:
            scale *= 2
            result = attempt(scale)
            if not ok(result):
                bad = scale
                break
            good = (scale, result)
    else:
        bad = scale
        while runs < max_runs:
            scale /= 2
            result = attempt(scale)
            if ok(result):
                good = (scale, result)
                break
            bad = scale
    if good is None:
        return Capacity(0.0, 0.0, result, runs)
    while bad is not None and bad / good[0] > 1 + tolerance and runs < max_runs:
        middle = math.sqrt(good[0] * bad)
        result = attempt(middle)
        if ok(result):
            good = (middle, result)
        else:
            bad = middle
    return Capacity(good[1].request_rate_rps, good[0], good[1], runs)
