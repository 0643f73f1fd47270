"""The composition root: settings (app/settings.py) -> the gateway's components, wired once per process.

Nothing else constructs components; `api.create_app(build_runtime(settings))` is the whole gateway,
used as is by the bare ASGI server, the tests and each Ray Serve replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from opentelemetry.sdk.trace import SpanProcessor
from prometheus_client import CollectorRegistry

from fleetgate.app.api import create_app
from fleetgate.app.drain import Drain
from fleetgate.app.logs import configure_logging
from fleetgate.app.settings import GatewaySettings
from fleetgate.app.tracing import trace_requests, tracer_provider, tracing_config, upstream_trace_config
from fleetgate.core.errors import InvalidRequestError
from fleetgate.core.plan import Planner
from fleetgate.core.request import ApiKind
from fleetgate.policies.static_planner import StaticPlanner
from fleetgate.pools.k8s import EndpointSliceDiscovery
from fleetgate.pools.membership import FleetFileWatcher, FleetMembership, watch_fleet_file
from fleetgate.pools.model import Pool
from fleetgate.pools.outliers import OutlierPolicy
from fleetgate.pools.registry import FleetRegistry, HealthPolicy
from fleetgate.router.admission import Admission
from fleetgate.router.frontdoor import FrontDoor
from fleetgate.router.gateway import Gateway
from fleetgate.router.ingress import parse_inference_request
from fleetgate.router.keyring import KeyRing, KeysWatcher
from fleetgate.router.keys import load_keys
from fleetgate.router.metrics import GatewayMetrics
from fleetgate.router.proxy import ProxyTimeouts, UpstreamClient
from fleetgate.router.ratelimit import RateLimiter
from fleetgate.router.retry_budget import RetryPolicy
from fleetgate.router.routing.base import Router
from fleetgate.router.routing.registry import make_router
from fleetgate.router.telemetry import Telemetry

if TYPE_CHECKING:
    from fleetgate.cache.embed import Embedder
    from fleetgate.cache.semantic import SemanticCache
    from fleetgate.cache.store import DocumentStore

log = logging.getLogger("fleetgate.gateway")


class Runtime:
    """The components of one gateway process and their start/stop (the app's lifespan)."""

    def __init__(self, settings: GatewaySettings, router_factory: Callable[..., Router] = make_router,
                 embedder: Embedder | None = None, span_processor: SpanProcessor | None = None) -> None:
        """`span_processor`: where spans go instead of the OTLP exporter, when tracing is on (tests)."""
        self.settings = settings
        configure_logging(settings.log_level, settings.log_format)
        tracing = tracing_config(settings, os.environ)
        self.tracer_provider = tracer_provider(tracing, span_processor) if tracing is not None else None
        self.max_body_bytes = settings.max_body_bytes
        self.max_header_bytes = settings.max_header_bytes
        self.body_read_timeout_s = settings.body_read_timeout_s
        self.send_timeout_s = settings.send_timeout_s
        fleet = settings.fleet_config()
        pools = fleet.to_pools()
        self.registry = FleetRegistry(pools, policy=HealthPolicy(
            probe_interval_s=settings.probe_interval_s,
            probe_timeout_s=settings.probe_timeout_s,
            eject_cooldown_s=settings.eject_cooldown_s,
            probe_timeouts_to_fail=settings.probe_timeouts_to_fail,
            outliers=OutlierPolicy(
                consecutive_failures=settings.outlier_consecutive_failures,
                max_ejection_s=settings.outlier_max_ejection_s,
                latency_factor=settings.outlier_latency_factor,
                latency_min_samples=settings.outlier_latency_min_samples,
                latency_floor_s=settings.outlier_latency_floor_ms / 1000,
            ),
        ))
        self.membership = FleetMembership(fleet, self.registry, discovery=EndpointSliceDiscovery)
        self.drain = Drain()
        self.upstream = UpstreamClient(ProxyTimeouts(
            connect_s=settings.connect_timeout_s,
            first_byte_s=settings.first_byte_timeout_s,
            idle_s=settings.idle_timeout_s,
            nonstream_response_s=settings.nonstream_timeout_s,
        ), connections_per_instance=settings.upstream_connections_per_instance,
            trace_configs=[upstream_trace_config(self.tracer_provider)] if self.tracer_provider else ())
        self.policy: PolicyRuntime | None = PolicyRuntime(settings, pools, embedder) if settings.policy else None
        planner: Planner = self.policy.planner if self.policy else StaticPlanner(
            pools, settings.router, ttft_slo_s=settings.ttft_slo_ms / 1000 if settings.ttft_slo_ms else None)
        metrics = GatewayMetrics(CollectorRegistry())
        self.gateway = Gateway(
            registry=self.registry,
            planner=planner,
            upstream=self.upstream,
            metrics=metrics,
            router_factory=router_factory,
            cache=self.policy.cache if self.policy else None,
            max_attempts=settings.max_attempts,
            retry_policy=RetryPolicy(
                budget_ratio=settings.retry_budget_ratio,
                budget_window_s=settings.retry_budget_window_s,
                min_retries_per_s=settings.retry_budget_min_per_s,
                backoff_base_s=settings.retry_backoff_base_s,
                backoff_max_s=settings.retry_backoff_max_s,
            ),
            resend_check_s=settings.resend_check_s,
            admission=Admission(queue_size=settings.admission_queue_size, recheck_s=settings.admission_recheck_s,
                                max_wait_s=settings.admission_max_wait_s, metrics=metrics)
            if settings.admission else None,
            telemetry=Telemetry(self.tracer_provider.get_tracer("fleetgate") if self.tracer_provider else None,
                                access_log=settings.access_log),
        )
        metrics.watch_fleet(self.registry)
        metrics.watch_outliers(self.registry)
        if self.policy is not None and self.policy.cache is not None:
            self.gateway.metrics.watch_cache(self.policy.cache)
        self.front_door, self.keys_watcher = _front_door(settings, self.gateway.metrics)
        if self.front_door.limiter is not None:
            self.gateway.add_usage_listener(self.front_door.on_usage)
        self.admin_token = _admin_token(settings.admin_token_env)
        self.membership.on_change(self._fleet_changed)
        self._tasks: list[asyncio.Task[None]] = []

    def _fleet_changed(self, pools: Mapping[str, Pool]) -> None:
        """Pools or instances came or went (pools/membership.py): the planner and upstream keys follow."""
        self.gateway.read_upstream_keys()
        if self.policy is not None:
            self.policy.fleet_changed(pools)
        elif isinstance(planner := self.gateway.planner, StaticPlanner):
            planner.set_pools(pools)

    async def start(self) -> None:
        await self.upstream.start()
        await self.registry.refresh(self.upstream.probe_session)  # serve with a real picture from the first request
        self._tasks.append(asyncio.create_task(self.registry.run(self.upstream.probe_session), name="fleet-refresh"))
        if self.policy is not None:
            self._tasks += await self.policy.start()
        if self.keys_watcher is not None:
            self._tasks.append(asyncio.create_task(_watch_keys(self.keys_watcher, self.settings.policy_poll_s),
                                                   name="keys-reload"))
        await self.membership.start()
        if self.settings.fleet is not None:
            watcher = FleetFileWatcher(self.membership, self.settings.fleet, interval_s=self.settings.policy_poll_s)
            self._tasks.append(asyncio.create_task(watch_fleet_file(watcher, self.settings.policy_poll_s),
                                                   name="fleet-reload"))

    async def stop(self) -> None:
        if not await self.drain.drain(self.settings.graceful_shutdown_timeout_s):
            log.warning("requests still in flight after graceful_shutdown_timeout_s=%s; closing them",
                        self.settings.graceful_shutdown_timeout_s)
        await self.membership.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.policy is not None:
            await self.policy.stop()
        await self.upstream.close()
        if self.tracer_provider is not None:
            await asyncio.to_thread(self.tracer_provider.shutdown)  # sends the spans still batched

    async def explain(self, raw_body: bytes, api: ApiKind, headers: Mapping[str, str]) -> dict[str, Any]:
        """The plan a request would get, without sending it (admin endpoint); `headers` as the
        request would carry them (session id, API key)."""
        if self.policy is None:
            raise InvalidRequestError("explain needs a policy file (--policy); without one every pool of the "
                                      "model is served by one router")
        request = parse_inference_request(raw_body, api, request_id="explain", arrival_s=0.0, headers=headers)
        return await self.policy.planner.explain(request)

    async def reload_policy(self) -> list[str]:
        """Reload the policy file now; its errors (empty: the new policy is in effect)."""
        if self.policy is None:
            raise InvalidRequestError("no policy file to reload: the gateway was started without --policy")
        return [str(problem) for problem in await asyncio.to_thread(self.policy.watcher.reload_now)]


class PolicyRuntime:
    """The YAML policy, its hot reload, and the semantic cache it configures."""

    def __init__(self, settings: GatewaySettings, pools: Mapping[str, Pool], embedder: Embedder | None = None) -> None:
        """`embedder`: the model to embed with (Ray Serve's shared deployment); None: one in this
        process, loaded only when the policy first needs an embedding."""
        from fleetgate.cache.embed import AsyncBatchingEmbedder, OnDemandEmbedder
        from fleetgate.cache.semantic import SemanticCache
        from fleetgate.policies.reload import PolicySource, PolicyWatcher, build_planner

        model = embedder or OnDemandEmbedder.sentence_transformer(settings.embedding_model,
                                                                  max_threads=1)  # 10x faster on busy CPUs
        self.model = model
        self.embedder = AsyncBatchingEmbedder(model)
        self.source = PolicySource(Path(settings.policy or ""), pools=pools, embedder=model)
        self.planner = build_planner(self.source, self.embedder)
        self.watcher = PolicyWatcher(self.planner, self.source, interval_s=settings.policy_poll_s)
        self.poll_s = settings.policy_poll_s
        self._fleet_changed = False
        self.cache: SemanticCache | None = None
        if settings.semantic_cache:
            cache = self.cache = SemanticCache(embedder=self.embedder, store=_document_store(settings),
                                               policies=self.planner.compiled.cache_policies)
            self.planner.on_swap(lambda compiled: cache.update_policies(compiled.cache_policies))

    async def start(self) -> list[asyncio.Task[None]]:
        if self.cache is not None:
            await self.cache.start()
        return [asyncio.create_task(self._watch(), name="policy-reload")]

    async def stop(self) -> None:
        if self.cache is not None:
            await self.cache.stop()

    def fleet_changed(self, pools: Mapping[str, Pool]) -> None:
        """Compile the policy against the new pools at the next poll, when their names, models or
        context lengths changed (an instance more or less changes none of them)."""
        if _pool_shapes(pools) != _pool_shapes(self.source.pools or {}):
            self.source = self.watcher.source = replace(self.source, pools=pools)
            self._fleet_changed = True

    async def _watch(self) -> None:
        """Reload the policy when its file (or the fleet's pools) changes; a bad file keeps the old one."""
        while True:
            await asyncio.sleep(self.poll_s)
            if self._fleet_changed:
                self._fleet_changed = False
                await asyncio.to_thread(self.watcher.reload_now)
            else:
                await asyncio.to_thread(self.watcher.poll)


def _pool_shapes(pools: Mapping[str, Pool]) -> set[tuple[str, str, int]]:
    return {(pool.name, pool.model, pool.max_context_tokens) for pool in pools.values()}


def _front_door(settings: GatewaySettings, metrics: GatewayMetrics) -> tuple[FrontDoor, KeysWatcher | None]:
    """Keys, model permissions and rate limits (a keys file), or an open front door (none)."""
    if settings.keys is None:
        return FrontDoor(), None
    ring = KeyRing(load_keys(settings.keys))  # a bad or missing file stops the start: never open by accident
    limiter = RateLimiter(metrics, settings.redis_url, timeout_s=settings.redis_timeout_s)
    return FrontDoor(ring, limiter), KeysWatcher(ring, settings.keys, interval_s=settings.policy_poll_s)


async def _watch_keys(watcher: KeysWatcher, poll_s: float) -> None:
    """Reload the keys file when it changes; a bad file keeps the keys in effect."""
    while True:
        await asyncio.sleep(poll_s)
        await asyncio.to_thread(watcher.poll)


def _admin_token(variable: str | None) -> str | None:
    """The admin token from the environment variable the settings name (never from a setting itself)."""
    if variable is None:
        return None
    token = os.environ.get(variable, "")
    if not token:
        raise ValueError(f"admin_token_env names {variable}, which is not set (or empty) in the gateway's "
                         "environment")
    return token


def _document_store(settings: GatewaySettings) -> DocumentStore:
    from fleetgate.cache.store import InMemoryDocumentStore, RedisDocumentStore

    if settings.redis_url is None:
        return InMemoryDocumentStore()
    return RedisDocumentStore(settings.redis_url, socket_timeout_s=settings.redis_timeout_s)


def build_asgi_app(settings: GatewaySettings, router_factory: Callable[..., Router] = make_router, *,
                   client_address_known: bool = True, embedder: Embedder | None = None) -> Any:
    """The gateway as an ASGI app (its lifespan starts and stops the runtime); `client_address_known`:
    whether a request's peer address is the real client's (not behind Ray Serve's HAProxy);
    `embedder`: a shared embedding model (None: one in process, loaded when first needed)."""
    runtime = Runtime(settings, router_factory, embedder)
    app = create_app(runtime, client_address_known=client_address_known)
    if runtime.tracer_provider is not None:
        trace_requests(app, runtime.tracer_provider)
    return app

