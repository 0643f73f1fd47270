"""Gateway.handle(): plan -> cache -> route -> proxy -> record, for one parsed request; and
Gateway.cache_feedback(), a client reporting a cache hit wrong.

Framework-free: `api.py` turns the returned `GatewayResponse` into HTTP. Everything a request
needs is already in memory (fleet snapshot, router state, local load); the only awaits are the
backend and, when the category allows caching, the semantic cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any, AsyncGenerator, Callable, Mapping

import orjson

from fleetgate.core.clock import Clock, monotonic_clock
from fleetgate.core.errors import (
    CacheHitNotFoundError,
    NoHealthyInstanceError,
    UpstreamError,
)
from fleetgate.core.plan import (
    CacheHit,
    CacheMiss,
    Planner,
    ResponseCache,
    RoutePlan,
    plan_summary,
)
from fleetgate.core.request import PASS_THROUGH_APIS, InferenceRequest
from fleetgate.core.usage import Usage
from fleetgate.pools.model import Endpoint, FleetSnapshot
from fleetgate.pools.profiles import GpuProfile
from fleetgate.pools.registry import FleetRegistry
from fleetgate.router.admission import QUEUED_HEADER, Admission, Option, priority_class
from fleetgate.router.anthropic import sse_error
from fleetgate.router.cache_replay import hit_usage, replay_body, replay_sse
from fleetgate.router.completion_text import completion_from_body, completion_from_sse
from fleetgate.router.ingress import parse_cache_feedback, tenant_of
from fleetgate.router.lora import AdapterUnavailableError, LoraLoader, base_model
from fleetgate.router.metrics import GatewayMetrics
from fleetgate.router.passthrough import PassThroughPlanner
from fleetgate.router.pressure import PoolPressure
from fleetgate.router.proxy import BUSY, UpstreamAttemptError, UpstreamClient, UpstreamResponse
from fleetgate.router.retry_budget import RetryBudget, RetryPolicy, backoff_s
from fleetgate.router.routing.base import (
    InstanceView,
    ResendingRouter,
    RouteDecision,
    Router,
    RouteRequest,
    resends,
)
from fleetgate.router.telemetry import ADMISSION, CACHE, PLAN, ROUTE, UPSTREAM, RequestTelemetry, Telemetry
from fleetgate.router.usage_stream import UsageRelay, ask_for_usage, usage_from_body

log = logging.getLogger("fleetgate.gateway")

_API_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "messages": "/v1/messages",
              "responses": "/v1/responses", "embeddings": "/v1/embeddings", "tokenize": "/tokenize",
              "detokenize": "/detokenize"}
_IDEMPOTENT_APIS = frozenset({"embeddings", "tokenize", "detokenize"})  # safe to run twice
# Streamed generation whose connection broke before its first byte: no byte reached the client and the
# instance aborts the work on the closed connection, exactly as after a first-byte timeout (which is
# retried). `responses` is left out: with `store` the instance keeps the answer it may have made.
_RESENDABLE_STREAMS = frozenset({"chat", "completions", "messages"})
_DONE = b"data: [DONE]\n\n"
_NO_TOKENS = Usage(0, 0, 0)

UsageListener = Callable[[InferenceRequest, str, Usage], None]


@dataclass(slots=True)
class GatewayResponse:
    """What to send back: a full body, or a stream of SSE bytes (exactly one of them)."""

    status: int
    headers: dict[str, str]
    body: bytes | None = None
    stream: AsyncGenerator[bytes, None] | None = None  # closed by the HTTP layer when the client leaves
    content_type: str = "application/json"


class LocalLoad:
    """What this replica itself has in flight per instance (added to the scraped load). Attempts
    change it through these methods as they start, get their first byte and end; routing reads it."""

    __slots__ = ("_inflight", "_queued_prefill_tokens")

    def __init__(self) -> None:
        self._inflight: defaultdict[str, int] = defaultdict(int)
        self._queued_prefill_tokens: defaultdict[str, int] = defaultdict(int)

    def inflight(self, instance: str) -> int:
        return self._inflight.get(instance, 0)

    def queued_prefill_tokens(self, instance: str) -> int:
        return self._queued_prefill_tokens.get(instance, 0)

    def started(self, instance: str, prompt_tokens: int) -> None:
        self._inflight[instance] += 1
        self._queued_prefill_tokens[instance] += prompt_tokens

    def prefilled(self, instance: str, prompt_tokens: int) -> None:
        """The prompt no longer waits for prefill there (first byte, or the attempt ended without one)."""
        self._queued_prefill_tokens[instance] -= prompt_tokens

    def ended(self, instance: str) -> None:
        self._inflight[instance] -= 1


class Gateway:
    """One per process; see the module docstring."""

    def __init__(
        self,
        *,
        registry: FleetRegistry,
        planner: Planner,
        upstream: UpstreamClient,
        metrics: GatewayMetrics,
        router_factory: Callable[..., Router],
        cache: ResponseCache | None = None,
        max_attempts: int,
        resend_check_s: float,
        retry_policy: RetryPolicy = RetryPolicy(),
        admission: Admission | None = None,
        telemetry: Telemetry | None = None,
        clock: Clock = monotonic_clock,
    ) -> None:
        self.registry = registry
        self.planner = planner
        self.upstream = upstream
        self.metrics = metrics
        self.cache = cache
        self.admission = admission
        self.telemetry = telemetry or Telemetry()  # default: no spans, no access log
        self._router_factory = router_factory
        self._routers: dict[tuple[str, str], Router] = {}
        self.clock = clock
        self._max_attempts = max_attempts
        self._retry_policy = retry_policy
        self._retry_budgets: dict[str, RetryBudget] = {}
        self._jitter = random.Random()
        self._resend_check_s = resend_check_s
        self._local = LocalLoad()
        self._pressure = PoolPressure()
        metrics.watch_kv(registry)
        self._scraped_profiles: dict[str, tuple[GpuProfile, int, GpuProfile]] = {}  # see _profile
        self._upstream_auth: dict[str, str] = {}
        self.read_upstream_keys()  # at start: an unset key variable fails the start, not a request
        self._usage_listeners: list[UsageListener] = []
        self._passthrough = PassThroughPlanner(lambda: registry.snapshot, lambda: upstream.probe_session, self._pool_auth)
        self._lora = LoraLoader(registry, lambda: upstream.session, self._pool_auth)

    def read_upstream_keys(self) -> None:
        """Read each pool's upstream key from the environment (at start, and when the fleet's pools change)."""
        self._upstream_auth = {name: auth for name, pool in self.registry.snapshot.pools.items()
                               if (auth := pool.upstream_authorization(os.environ)) is not None}

    def add_usage_listener(self, listener: UsageListener) -> None:
        """Call `listener(request, pool, usage)` once for every request that got an answer from a backend,
        when it ends (see `_account`); not for cache hits, nor for requests that never got a first byte.
        Listeners run on the event loop and must not block; one that raises is logged and skipped."""
        self._usage_listeners.append(listener)

    async def handle(self, request: InferenceRequest, raw_body: bytes, headers: Mapping[str, str]) -> GatewayResponse:
        """Serve one request; raises a GatewayError the API layer turns into an OpenAI error."""
        record = self.telemetry.begin(request)
        with record.span(PLAN):
            adapter_of = base_model(self.registry.snapshot, request.model)  # a LoRA adapter: planned as its base model
            planned = request if adapter_of is None else replace(request, model=adapter_of)
            plan = await (self._passthrough.plan(planned, self.planner) if request.api in PASS_THROUGH_APIS
                          else self.planner.plan(planned))
            record.note(rule=plan.rule, category=plan.profile.category)
        self.metrics.policy_rules.labels(plan.rule).inc()
        miss: CacheMiss | None = None
        if self.cache is not None and plan.cache_policy is not None:
            with record.span(CACHE):
                lookup = await self.cache.lookup(request, plan)
                outcome = {CacheHit: "hit", CacheMiss: "miss"}.get(type(lookup), "bypass")
                record.note(cache=outcome, similarity=lookup.similarity if isinstance(lookup, CacheHit) else None)
            self.metrics.cache_lookups.labels(plan.profile.category, outcome).inc()
            if isinstance(lookup, CacheHit):
                self.metrics.cache_hit_similarity.labels(plan.profile.category).observe(lookup.similarity)
                return self._cache_hit_response(request, plan, lookup, record)
            if isinstance(lookup, CacheMiss):
                miss = lookup
        try:
            with record.span(ROUTE):
                route_request = await self._route_request(request, plan, adapter=None if adapter_of is None else request.model)
                pool, router, decision, waited_s = await self._admit(request, route_request, plan, record)
            forward_headers = self._upstream_headers(request, headers, pool)
            upstream_body, strip_usage = ask_for_usage(request, raw_body)
            with record.span(UPSTREAM):
                upstream, flight, route_reason = await self._open(request, upstream_body, forward_headers,
                                                                  route_request, pool, router, decision)
                record.note(instance=flight.endpoint.name, route=route_reason, upstream_status=upstream.status)
        except BaseException:
            self._release(miss)
            raise
        response_headers = {
            "x-request-id": request.request_id,
            "x-fleetgate-pool": pool,
            "x-fleetgate-instance": flight.endpoint.name,
            "x-fleetgate-route": route_reason,
            "x-fleetgate-rule": plan.rule,
            "x-fleetgate-cache": "miss" if miss is not None else "bypass",
        }
        if waited_s > 0:
            response_headers[QUEUED_HEADER] = f"{waited_s * 1e3:.1f}"
        if flight.estimated_ttft_s is not None:
            response_headers["x-fleetgate-estimated-ttft-ms"] = f"{flight.estimated_ttft_s * 1e3:.1f}"
        if headers.get("x-fleetgate-debug"):
            response_headers["x-fleetgate-plan"] = plan_summary(plan)
        flight.first_byte()
        record.first_byte(self.clock())
        if request.stream and upstream.status == 200:
            return GatewayResponse(200, response_headers, content_type=upstream.content_type,
                                   stream=self._relay(request, upstream, flight, miss, strip_usage, record))
        try:
            body = await upstream.read_all()
        except BaseException as error:
            flight.finish(ok=False, error_kind="broken" if isinstance(error, UpstreamError) else "client-gone")
            self._account(request, flight.pool, Usage(request.prompt_tokens, 0, 0))
            self._release(miss)
            raise
        finally:
            upstream.close()
        flight.finish(ok=upstream.status < 400, status=upstream.status)
        usage = usage_from_body(body, request.api) if upstream.status < 400 else _NO_TOKENS  # vLLM refuses before any work
        spent = usage or Usage(request.prompt_tokens, 0, 0)
        self._account(request, flight.pool, spent)
        record.finish(upstream.status, spent)
        await self._store(miss, completion_from_body(request.api, body) if upstream.status == 200 else None, usage)
        return GatewayResponse(upstream.status, response_headers, body=body, content_type=upstream.content_type)

    def _pool_auth(self, pool: str) -> dict[str, str]:
        """The header carrying `pool`'s own key (fleet file `api_key_env`), for the gateway's own calls."""
        credential = self._upstream_auth.get(pool)
        return {"Authorization": credential} if credential is not None else {}

    def _upstream_headers(self, request: InferenceRequest, headers: Mapping[str, str], pool: str) -> dict[str, str]:
        """What the instance is sent: the pool's own key (fleet file `api_key_env`), or the client's
        Authorization only where the pool opts in (`forward_client_key`); by default no credential."""
        forward = {"Content-Type": "application/json", "x-request-id": request.request_id}
        credential = self._upstream_auth.get(pool)
        if credential is not None:
            forward["Authorization"] = credential
        elif "authorization" in headers and self.registry.snapshot.pools[pool].forward_client_key:
            forward["Authorization"] = headers["authorization"]
        return forward

    def router_for(self, pool: str, name: str, params: tuple[tuple[str, Any], ...] = ()) -> Router:
        """The replica-local router object of (pool, algorithm, parameters), built on first use."""
        key = (pool, name, params)
        router = self._routers.get(key)
        if router is None:
            router = self._routers[key] = self._router_factory(name, **dict(params))
        return router

    async def _route_request(self, request: InferenceRequest, plan: RoutePlan, *, adapter: str | None) -> RouteRequest:
        kv_pool = next((pool for pool in plan.pools if self.registry.kv_live(pool)), None)
        # Tokenizing a long prompt takes milliseconds (170 ms at 32k tokens with a real tokenizer):
        # off the event loop, and only where a pool publishes KV events.
        kv_hashes = await asyncio.to_thread(self.registry.kv_hashes, kv_pool, request) if kv_pool is not None else ()
        return RouteRequest(
            request_id=request.request_id,
            prefix_hashes=request.prefix_hashes,
            prompt_tokens=request.prompt_tokens,
            expected_output_tokens=plan.profile.output_tokens,
            session_id=request.session_id,
            ttft_slo_s=plan.ttft_slo_s,
            key_blocks=plan.key_blocks,
            category=plan.profile.category,
            stream=request.stream,
            kv_hashes=kv_hashes,  # for the first pool with a live precise-mode instance: the plan's pools serve one model
            adapter=adapter,
        )

    async def _admit(self, request: InferenceRequest, route_request: RouteRequest, plan: RoutePlan,
                     record: RequestTelemetry) -> tuple[str, Router, RouteDecision, float]:
        """Route now, or wait in the pools' admission queue and be routed again when it is this
        request's turn (the fleet changed meanwhile); with the seconds waited."""
        if self.admission is None:
            pool, router, decision = self._route(route_request, plan)
            waited_s = 0.0
        else:
            def probe() -> Option[tuple[str, Router, RouteDecision]]:
                routed = self._route(route_request, plan)
                return Option(routed, routed[2].estimated_ttft_s)

            with record.span(ADMISSION):
                admitted = await self.admission.admit(
                    plan.pools, tenant=request.tenant, priority=priority_class(request.priority, plan.priority),
                    tokens=route_request.prompt_tokens + route_request.expected_output_tokens, slo_s=plan.ttft_slo_s,
                    arrival_s=request.arrival_s, probe=probe)
                record.note(queued_ms=round(admitted.waited_s * 1e3, 1))
            (pool, router, decision), waited_s = admitted.route, admitted.waited_s
        reason = f"{decision.reason}+spill" if plan.pools_ranked and pool != plan.pools[0] else decision.reason
        self.metrics.route_decisions.labels(pool, plan.router, reason).inc()  # the decision acted on, not each probe
        record.note(pool=pool, instance=decision.chosen.name, route=reason,
                    estimated_ttft_ms=None if decision.estimated_ttft_s is None else round(decision.estimated_ttft_s * 1e3, 1))
        return pool, router, decision, waited_s

    def _route(self, route_request: RouteRequest, plan: RoutePlan) -> tuple[str, Router, RouteDecision]:
        """Pick the pool, then the instance order within it.

        Ranked pools: the first healthy pool whose router expects the TTFT SLO to hold (routers
        without an estimate always do); when none does, the one with the lowest estimate. Unranked
        pools: whichever promises the lowest TTFT, or for routers without an estimate the least
        loaded per instance. Pools without a healthy instance are skipped."""
        snapshot = self.registry.snapshot
        best: tuple[tuple[float, float], str, Router, RouteDecision] | None = None
        for pool in plan.pools:
            healthy = snapshot.healthy(pool)
            if plan.instances is not None:
                healthy = tuple(e for e in healthy if e.name in plan.instances)
            if not healthy:
                continue
            router = self.router_for(pool, plan.router, plan.router_params)
            views = self._views(snapshot, healthy)
            decision = router.route(route_request, views, self.clock())
            if route_request.adapter is not None:
                decision = self._lora.prefer_holders(route_request.adapter, decision, views)
            estimate_s = decision.estimated_ttft_s if decision.estimated_ttft_s is not None else 0.0
            rank = (estimate_s, sum(v.load for v in views) / len(views))  # routers without estimates: least load
            if best is None or rank < best[0]:
                best = (rank, pool, router, decision)
            if plan.pools_ranked and (plan.ttft_slo_s is None or estimate_s <= plan.ttft_slo_s):
                break
        if best is None:
            raise NoHealthyInstanceError(f"no healthy instance in pool(s) {', '.join(plan.pools)} for model "
                                         f"{plan.profile.model!r}; retry later")
        _, pool, router, decision = best
        return pool, router, decision

    def _views(self, snapshot: FleetSnapshot, endpoints: tuple[Endpoint, ...]) -> list[InstanceView]:
        local = self._local
        return [
            InstanceView(
                endpoint=endpoint,
                profile=self._profile(endpoint, (state := snapshot.state(endpoint)).kv_cache_tokens),
                waiting=state.waiting,
                running=state.running,
                kv_usage_ratio=state.kv_usage_ratio,
                scraped_at_s=state.scraped_at_s or None,  # the registry and the routers share the gateway's clock
                local_inflight=local.inflight(endpoint.name),
                local_queued_prefill_tokens=local.queued_prefill_tokens(endpoint.name),
                kv=self.registry.kv_view(endpoint),
            )
            for endpoint in endpoints
        ]

    def _profile(self, endpoint: Endpoint, kv_cache_tokens: int | None) -> GpuProfile:
        """The endpoint's profile with the KV capacity the instance reports (vllm:cache_config_info),
        built once per (endpoint, capacity), not per request."""
        base = endpoint.profile
        if kv_cache_tokens is None or kv_cache_tokens == base.kv_cache_tokens:
            return base
        known = self._scraped_profiles.get(endpoint.name)
        if known is None or known[0] is not base or known[1] != kv_cache_tokens:
            known = self._scraped_profiles[endpoint.name] = (base, kv_cache_tokens,
                                                             replace(base, kv_cache_tokens=kv_cache_tokens))
        return known[2]

    async def _open(
        self, request: InferenceRequest, raw_body: bytes, forward_headers: Mapping[str, str],
        route_request: RouteRequest, pool: str, router: Router, decision: RouteDecision,
    ) -> tuple[UpstreamResponse, "_Flight", str]:
        """Send to the decision's instances in order until one gives a first byte (bounded), and
        return it with the route reason. Each outcome feeds the registry's outlier detection; an
        instance it holds out (ejected, backing off, a half-open trial already under way) is skipped.
        A retry must be safe (`_may_retry`) and waits a jittered back-off; an instance answering
        429/503 with Retry-After is left alone that long, and its answer reaches the client when no
        other instance can take the request. A `ResendingRouter` (DualMap) may move a streaming
        request still waiting for its first byte to its other candidate, once."""
        candidates = decision.attempts(self._max_attempts)  # fallbacks are ranked only if the first choice fails
        resender = router if request.stream and resends(router) else None  # a non-streaming first byte is the whole answer
        reason = decision.reason
        last_error: UpstreamAttemptError | None = None
        attempts = 0
        self._budget(pool).request()
        while (endpoint := next(candidates, None)) is not None:
            if not self.registry.admit(endpoint):
                continue  # held out since the route decision
            if last_error is not None:
                if not await self._may_retry(request, pool, last_error, attempts):
                    break
                reason = _noted(reason, "retry")
            attempts += 1
            flight = _Flight(self, self._local, router, route_request, request, endpoint, pool,
                             decision.estimated_ttft_s if attempts == 1 else None)  # estimates are for the chosen one
            sent_s = self.clock()
            try:
                upstream, moved = await self._first_byte_with_adapter(request, raw_body, forward_headers, route_request,
                                                                      pool, resender, endpoint)
            except AdapterUnavailableError:
                self.registry.abandon(endpoint)
                flight.finish(ok=False, error_kind="lora-unavailable")
                raise
            except UpstreamAttemptError as error:
                if error.kind == BUSY and error.retry_after_s is not None:
                    self.registry.back_off(endpoint, error.retry_after_s)
                    reason = _noted(reason, "backoff")
                else:
                    self.registry.report_failure(endpoint, error.kind)
                flight.finish(ok=False, error_kind=error.kind)
                last_error = error
                continue
            except BaseException:  # the client went away (cancellation) while we waited
                self.registry.abandon(endpoint)
                flight.finish(ok=False, error_kind="client-gone")
                raise
            if upstream is None:
                assert moved is not None
                self.registry.abandon(endpoint)
                flight.finish(ok=False, error_kind="resent")
                self.metrics.route_decisions.labels(pool, router.name, "resend").inc()
                candidates, reason, attempts, last_error = moved.attempts(self._max_attempts), "resend", 0, None
                decision = moved
                continue
            self.registry.report_success(endpoint, self.clock() - sent_s if request.stream else None,
                                         complete=not request.stream)
            return upstream, flight, reason
        if last_error is None:
            raise NoHealthyInstanceError(f"every instance chosen in pool {pool!r} is ejected or backing off; retry later")
        raise last_error

    def _budget(self, pool: str) -> RetryBudget:
        budget = self._retry_budgets.get(pool)
        if budget is None:
            budget = self._retry_budgets[pool] = RetryBudget(self._retry_policy, self.clock)
        return budget

    async def _may_retry(self, request: InferenceRequest, pool: str, error: UpstreamAttemptError, retry: int) -> bool:
        """Whether the request may go to its next candidate after `error`: never twice where the instance may
        have acted on a body that must not run twice, and only within the pool's retry budget; then wait
        the jittered back-off."""
        if error.may_have_acted and request.api not in _IDEMPOTENT_APIS and not (
                request.stream and request.api in _RESENDABLE_STREAMS):
            self.metrics.retries_withheld.labels(pool, "not-idempotent").inc()
            return False
        if not self._budget(pool).try_retry():
            self.metrics.retries_withheld.labels(pool, "budget").inc()
            return False
        self.metrics.retries.labels(pool, error.kind).inc()
        wait_s = backoff_s(self._retry_policy, retry, self._jitter)
        self.metrics.retry_backoff.labels(pool).observe(wait_s)
        await asyncio.sleep(wait_s)
        return True

    async def _first_byte_with_adapter(
        self, request: InferenceRequest, raw_body: bytes, forward_headers: Mapping[str, str],
        route_request: RouteRequest, pool: str, resender: ResendingRouter | None, endpoint: Endpoint,
    ) -> tuple[UpstreamResponse | None, RouteDecision | None]:
        """`_first_byte`, with the request's LoRA adapter loaded at `endpoint` first (router/lora.py), and
        loaded again, once, when the instance refuses it as unknown (unloaded since the registry looked)."""
        adapter = route_request.adapter
        if adapter is None:
            return await self._first_byte(request, raw_body, forward_headers, route_request, pool, resender, endpoint)
        await self._lora.ready(endpoint, adapter)
        upstream, moved = await self._first_byte(request, raw_body, forward_headers, route_request, pool, resender, endpoint)
        if upstream is not None and upstream.status == 404:
            upstream.close()
            await self._lora.ready(endpoint, adapter, lost=True)
            upstream, moved = await self._first_byte(request, raw_body, forward_headers, route_request, pool, resender,
                                                     endpoint)
        return upstream, moved

    async def _first_byte(
        self, request: InferenceRequest, raw_body: bytes, forward_headers: Mapping[str, str],
        route_request: RouteRequest, pool: str, resender: ResendingRouter | None, endpoint: Endpoint,
    ) -> tuple[UpstreamResponse | None, RouteDecision | None]:
        """The instance's first byte, or (None, decision) when `resender` moved the request away
        while it was still queued there (the request at `endpoint` is cancelled)."""
        opening = self.upstream.open(endpoint.url + _API_PATHS[request.api], raw_body, forward_headers,
                                     stream=request.stream)
        if resender is None:
            return await opening, None
        task = asyncio.ensure_future(opening)
        try:
            while True:
                done, _ = await asyncio.wait((task,), timeout=self._resend_check_s)
                if done:
                    return task.result(), None
                snapshot = self.registry.snapshot
                moved = resender.resend(route_request, endpoint, self._views(snapshot, snapshot.healthy(pool)), self.clock())
                if moved is not None and moved.chosen != endpoint:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, UpstreamError):
                        await task
                    return None, moved
        except BaseException:
            task.cancel()
            raise

    async def _relay(self, request: InferenceRequest, upstream: UpstreamResponse, flight: "_Flight",
                     miss: CacheMiss | None, strip_usage: bool,
                     record: RequestTelemetry) -> AsyncGenerator[bytes, None]:
        """Pass SSE bytes through as they come, but for the usage the client did not ask for
        (usage_stream.py); a failure after the first byte becomes an SSE error event and a clean
        end. Closing this generator (client gone) closes the upstream request."""
        kept: list[bytes] | None = [] if miss is not None else None
        relay = UsageRelay(strip=strip_usage, api=request.api)
        ok = False
        error_kind = "client-gone"
        record.stream_started()
        try:
            async for chunk in upstream.chunks():
                flight.chunk(chunk)
                if kept is not None:
                    kept.append(chunk)
                if out := relay.feed(chunk):
                    yield out
            ok = True
            self.registry.report_success(flight.endpoint, None)  # a clean end: the failure run is over
            if rest := relay.flush():
                yield rest
        except UpstreamError as error:
            error_kind = "broken"
            self.registry.report_failure(flight.endpoint, error_kind)
            yield relay.flush() + (sse_error(error) if request.api == "messages"
                                   else b"data: " + orjson.dumps(error.to_body()) + b"\n\n" + _DONE)
        finally:
            upstream.close()
            flight.finish(ok=ok, error_kind=None if ok else error_kind)
            # without a usage event (cut, client gone, a backend that ignores include_usage): what is known
            known = Usage(request.prompt_tokens, max(0, relay.events - (request.api == "chat")), 0)
            self._account(request, flight.pool, relay.usage or known)
            record.finish(200, relay.usage or known, error=None if ok else error_kind)
            if not ok:
                self._release(miss)
        if ok and kept is not None:
            await self._store(miss, completion_from_sse(request.api, b"".join(kept)), relay.usage)

    def _account(self, request: InferenceRequest, pool: str, usage: Usage) -> None:
        """Count the tokens a backend spent on `request` and tell the usage listeners, once per request.
        `usage` is the backend's report; a request that ended without one (cut, client gone) gets what is
        known: the prompt's stand-in count and, for a stream, one completion token per content event (vLLM
        may send several in one); a backend's 4xx refusal costs nothing."""
        self.metrics.count_usage(request, pool, usage)
        for listener in self._usage_listeners:
            try:
                listener(request, pool, usage)
            except Exception:
                log.exception("usage listener %r failed", listener)

    async def _store(self, miss: CacheMiss | None, completion: tuple[str, str] | None,
                     usage: Usage | None = None) -> None:
        """Remember a clean, complete answer; a cut or errored one is never stored (and identical
        requests waiting on it are released)."""
        if miss is None or self.cache is None:
            return
        if completion is None:
            self.cache.release(miss)
            return
        text, finish_reason = completion
        await self.cache.store(miss, text, finish_reason, usage)

    def _release(self, miss: CacheMiss | None) -> None:
        if miss is not None and self.cache is not None:
            self.cache.release(miss)

    def observe_ttft(self, pool: str, ttft_s: float, slo_s: float | None) -> None:
        """Count the TTFT SLO met or missed, and feed the pool-pressure signal that makes the cache relax for
        pools over their SLO."""
        if slo_s is not None:
            self.metrics.count_slo(pool, ttft_s <= slo_s)
        if slo_s is None or self.cache is None:
            return
        changed = self._pressure.observe(pool, ttft_s, slo_s)
        if changed is not None:
            self.cache.set_pool_pressure(pool, changed)

    async def cache_feedback(self, raw_body: bytes, headers: Mapping[str, str], tenant: str | None = None) -> None:
        """`POST /v1/cache/feedback`: the caller says the cache hit it got as `request_id` answered another
        question; the cache drops that entry. Only hits served to the caller's own key (its tenant, derived as
        for inference: `tenant` from the verified key, else from the header) can be reported; anything else is one
        indistinguishable CacheHitNotFoundError."""
        request_id = parse_cache_feedback(raw_body)
        if self.cache is None:
            raise CacheHitNotFoundError("this gateway runs without a semantic cache: no answer came from a cache")
        if not await self.cache.feedback(request_id, tenant or tenant_of(headers)):
            raise CacheHitNotFoundError("no cache hit served to this API key has that request_id (or it is too old)",
                                        param="request_id")

    def _cache_hit_response(self, request: InferenceRequest, plan: RoutePlan, hit: CacheHit,
                            record: RequestTelemetry) -> GatewayResponse:
        headers = {"x-request-id": request.request_id, "x-fleetgate-pool": "cache",
                   "x-fleetgate-instance": "semantic-cache", "x-fleetgate-route": "cache-hit",
                   "x-fleetgate-rule": plan.rule, "x-fleetgate-cache": "hit",
                   "x-fleetgate-cache-similarity": f"{hit.similarity:.4f}"}
        if hit.verifier_score is not None:
            headers["x-fleetgate-cache-verifier"] = f"{hit.verifier_score:.4f}"
        self.metrics.requests.labels(request.api, "cache", "semantic-cache", "cache-hit").inc()
        usage = hit_usage(request, hit)
        hit = replace(hit, usage=usage)  # the replay reports what is counted, computed once
        self.metrics.count_saved(request, usage)
        record.note(pool="cache", instance="semantic-cache", route="cache-hit")
        record.finish(200, usage)
        if request.stream:
            return GatewayResponse(200, headers, stream=replay_sse(request, hit), content_type="text/event-stream")
        return GatewayResponse(200, headers, body=orjson.dumps(replay_body(request, hit)))


def _noted(reason: str, note: str) -> str:
    """The route reason with `+note` added once (e.g. "rotation+backoff+retry")."""
    return reason if f"+{note}" in reason else f"{reason}+{note}"


class _Flight:
    """Bookkeeping of one attempt at one instance: local load, router callbacks, metrics."""

    __slots__ = ("_gateway", "_local", "_router", "_route_request", "_api", "_arrival_s", "endpoint", "pool",
                 "estimated_ttft_s", "_first_s", "_last_s", "_events", "_finished")

    def __init__(self, gateway: Gateway, local: LocalLoad, router: Router, route_request: RouteRequest,
                 request: InferenceRequest, endpoint: Endpoint, pool: str, estimate_s: float | None) -> None:
        """`estimate_s`: the router's TTFT estimate for this attempt, from now (None: it made none)."""
        self._gateway = gateway
        self._local = local
        self._router = router
        self._route_request = route_request
        self._api = request.api
        self._arrival_s = request.arrival_s
        self.endpoint = endpoint
        self.pool = pool
        self._first_s: float | None = None
        self._last_s = 0.0
        self._events = 0
        self._finished = False
        now_s = gateway.clock()
        # the estimated TTFT as the client sees it (from arrival); only a stream shows its first token
        self.estimated_ttft_s = now_s - request.arrival_s + estimate_s if estimate_s is not None and request.stream else None
        local.started(endpoint.name, route_request.prompt_tokens)
        gateway.metrics.inflight.labels(pool, endpoint.name).inc()
        router.on_dispatch(route_request, endpoint, now_s)

    def first_byte(self) -> None:
        now_s = self._gateway.clock()
        self._first_s = self._last_s = now_s
        self._local.prefilled(self.endpoint.name, self._route_request.prompt_tokens)
        self._gateway.metrics.ttft.labels(self.pool, self.endpoint.name).observe(now_s - self._arrival_s)
        if self.estimated_ttft_s is not None:
            self._gateway.metrics.ttft_estimate_error.labels(self.pool).observe(
                abs(now_s - self._arrival_s - self.estimated_ttft_s))
        self._gateway.observe_ttft(self.pool, now_s - self._arrival_s, self._route_request.ttft_slo_s)
        self._router.on_first_token(self._route_request, self.endpoint, now_s)
        if self._gateway.admission is not None:
            self._gateway.admission.capacity_freed(self.pool)

    def chunk(self, data: bytes) -> None:
        self._events += data.count(b"data:")
        self._last_s = self._gateway.clock()

    def finish(self, *, ok: bool, error_kind: str | None = None, status: int = 200) -> None:
        if self._finished:
            return
        self._finished = True
        gateway, name = self._gateway, self.endpoint.name
        now_s = gateway.clock()
        self._local.ended(name)
        if self._first_s is None:
            self._local.prefilled(name, self._route_request.prompt_tokens)
        metrics = gateway.metrics
        metrics.inflight.labels(self.pool, name).dec()
        if error_kind is not None:
            metrics.upstream_errors.labels(self.pool, name, error_kind).inc()
        if self._first_s is not None:
            metrics.e2e.labels(self.pool, name).observe(now_s - self._arrival_s)
            if self._events > 2:  # role chunk + tokens + [DONE]: gaps between token events
                metrics.tpot.labels(self.pool, name).observe((self._last_s - self._first_s) / (self._events - 2))
            outcome = error_kind or f"{status // 100}xx"
            metrics.requests.labels(self._api, self.pool, name, outcome).inc()
        self._router.on_finish(self._route_request, self.endpoint, now_s, ok)
        if gateway.admission is not None:
            gateway.admission.capacity_freed(self.pool)
