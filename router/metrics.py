"""Every Prometheus metric of the gateway, defined in one place on an injected registry.

Labels stay low-cardinality: pool, instance, api, route reason, outcome, category, model, and
tenants only from a keys file (see `tenant_label`); never request ids, keys or prompts. Histogram
buckets span cached-prefix TTFTs (a few ms) to long queues (minutes).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleetgate.core.request import InferenceRequest
from fleetgate.core.usage import Usage

ANONYMOUS_TENANT = "anonymous"  # the tenant label of every request without a key from a keys file
_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_SIMILARITY_BUCKETS = (0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99, 1.0)
_TPOT_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "fleetgate_requests_total", "Requests answered, by outcome (HTTP status class or 'cache-hit').",
            ["api", "pool", "instance", "outcome"], registry=registry)
        self.ttft = Histogram(
            "fleetgate_time_to_first_token_seconds", "Gateway arrival to first upstream byte.",
            ["pool", "instance"], buckets=_LATENCY_BUCKETS_S, registry=registry)
        self.tpot = Histogram(
            "fleetgate_time_per_output_token_seconds", "Mean gap between streamed chunks after the first.",
            ["pool", "instance"], buckets=_TPOT_BUCKETS_S, registry=registry)
        self.ttft_slo = Counter(
            "fleetgate_ttft_slo_requests_total", "Requests with a TTFT SLO, by whether their first byte met it.",
            ["pool", "outcome"], registry=registry)
        self.ttft_estimate_error = Histogram(
            "fleetgate_ttft_estimate_error_seconds", "|observed - estimated| TTFT of streamed requests, for "
            "routers that estimate TTFT (DualMap).", ["pool"], buckets=_LATENCY_BUCKETS_S, registry=registry)
        self.e2e = Histogram(
            "fleetgate_e2e_request_latency_seconds", "Gateway arrival to the last byte.",
            ["pool", "instance"], buckets=_LATENCY_BUCKETS_S, registry=registry)
        self.inflight = Gauge(
            "fleetgate_requests_in_flight", "Requests sent to an instance and not finished.",
            ["pool", "instance"], registry=registry)
        self.asyncio_tasks = Gauge(
            "fleetgate_asyncio_tasks", "Tasks on this gateway process's event loop, counted when /metrics is read "
            "(at steady load it stays flat; growth with requests served is a leak: `fleetgate bench soak`).",
            registry=registry)
        self.route_decisions = Counter(
            "fleetgate_route_decisions_total", "Routing decisions by router and reason.",
            ["pool", "router", "reason"], registry=registry)
        self.upstream_errors = Counter(
            "fleetgate_upstream_errors_total", "Upstream failures (refused, 5xx, timeout, broken stream).",
            ["pool", "instance", "kind"], registry=registry)
        self.retries = Counter(
            "fleetgate_retries_total", "Requests re-sent to another instance before the first byte, by the failure "
            "that caused it (refused, timeout, 5xx, broken, busy: 429/503 with Retry-After).",
            ["pool", "reason"], registry=registry)
        self.retries_withheld = Counter(
            "fleetgate_retries_withheld_total", "Retries not made, by why: budget (the pool's retry budget was "
            "spent), not-idempotent (the instance may have acted on a body that must not run twice).",
            ["pool", "reason"], registry=registry)
        self.retry_backoff = Histogram(
            "fleetgate_retry_backoff_seconds", "Jittered back-off waited before each retry.",
            ["pool"], buckets=_LATENCY_BUCKETS_S, registry=registry)
        self.rejected = Counter(
            "fleetgate_rejected_requests_total", "Requests refused by the gateway itself, by error code.",
            ["code"], registry=registry)
        self.internal_errors = Counter(
            "fleetgate_internal_errors_total", "Requests that failed on a gateway bug (500 internal_error).",
            registry=registry)
        self.ratelimited = Counter(
            "fleetgate_ratelimited_requests_total", "Requests refused with 429 by a rate limit, by whose limit "
            "(key, tenant) and which (rpm, tpm).", ["scope", "limit"], registry=registry)
        self.ratelimit_errors = Counter(
            "fleetgate_ratelimit_errors_total", "Rate-limit storage (Redis) calls that failed; the request was let "
            "through (limits fail open).", registry=registry)
        self.admission_queue_depth = Gauge(
            "fleetgate_admission_queue_depth", "Requests waiting for admission, by pool set and priority class.",
            ["pools", "priority"], registry=registry)
        self.admission_wait = Histogram(
            "fleetgate_admission_wait_seconds", "Time requests waited for admission, by how the wait ended "
            "(dispatched, shed, gone: the client left).", ["pools", "priority", "outcome"],
            buckets=_LATENCY_BUCKETS_S, registry=registry)
        self.admission_shed_total = Counter(
            "fleetgate_admission_shed_total", "Requests admission refused or shed, by reason (queue-full, slo, "
            "max-wait) and HTTP status (429, 503).", ["pools", "priority", "reason", "status"], registry=registry)
        self.cache_lookups = Counter(
            "fleetgate_cache_lookups_total", "Semantic cache lookups by category and outcome (hit, miss, bypass).",
            ["category", "outcome"], registry=registry)
        self.cache_hit_similarity = Histogram(
            "fleetgate_cache_hit_similarity", "Similarity of the question and the cached one, of each cache hit "
            "(1.0: an exact repeat).", ["category"], buckets=_SIMILARITY_BUCKETS, registry=registry)
        self.policy_rules = Counter(
            "fleetgate_policy_rule_matches_total", "Requests by the policy rule that planned them.",
            ["rule"], registry=registry)
        usage_labels = ["tenant", "model", "pool"]
        self.prompt_tokens = Counter(
            "fleetgate_prompt_tokens", "Prompt tokens backends reported (estimated when a request ended "
            "without a usage report).", usage_labels, registry=registry)
        self.cached_tokens = Counter(
            "fleetgate_cached_tokens", "Prompt tokens backends served from their prefix cache.",
            usage_labels, registry=registry)
        self.completion_tokens = Counter(
            "fleetgate_completion_tokens", "Completion tokens backends reported (counted from the stream's "
            "events when a request ended without a usage report).", usage_labels, registry=registry)
        self.cache_tokens_saved = Counter(
            "fleetgate_cache_tokens_saved", "Prompt plus completion tokens of answers served from the semantic "
            "cache: what the backends would have processed.", ["tenant", "model"], registry=registry)

    def count_usage(self, request: InferenceRequest, pool: str, usage: Usage) -> None:
        labels = (tenant_label(request), request.model, pool)
        self.prompt_tokens.labels(*labels).inc(usage.prompt_tokens)
        self.cached_tokens.labels(*labels).inc(usage.cached_tokens)
        self.completion_tokens.labels(*labels).inc(usage.completion_tokens)

    def count_saved(self, request: InferenceRequest, usage: Usage) -> None:
        self.cache_tokens_saved.labels(tenant_label(request), request.model).inc(
            usage.prompt_tokens + usage.completion_tokens)

    def count_slo(self, pool: str, met: bool) -> None:
        """One request's TTFT against its SLO; both outcomes exist from a pool's first request, so the
        attainment ratio has a numerator even while every request misses."""
        self.ttft_slo.labels(pool, "missed" if met else "met")
        self.ttft_slo.labels(pool, "met" if met else "missed").inc()

    def admission_depth(self, pools: str, priority: int, delta: int) -> None:
        self.admission_queue_depth.labels(pools, str(priority)).inc(delta)

    def admission_waited(self, pools: str, priority: int, outcome: str, waited_s: float) -> None:
        self.admission_wait.labels(pools, str(priority), outcome).observe(waited_s)

    def admission_shed(self, pools: str, priority: int, reason: str, status: int) -> None:
        self.admission_shed_total.labels(pools, str(priority), reason, str(status)).inc()

    def watch_cache(self, cache: "CacheCounters") -> None:
        """Export the semantic cache's own counters at scrape time (it keeps plain counters)."""
        self.registry.register(_CacheCollector(cache))

    def watch_fleet(self, source: "FleetSource") -> None:
        """Export each instance's health (1: serving, 0: ejected) at scrape time, for the alerts."""
        self.registry.register(_FleetCollector(source))

    def watch_outliers(self, source: "OutlierSource") -> None:
        """Export outlier detection's counters (pools/outliers.py) at scrape time."""
        self.registry.register(_OutlierCollector(source))

    def watch_kv(self, source: "KvSource") -> None:
        """Export the KV-event subscriptions' state (precise mode) at scrape time."""
        self.registry.register(_KvCollector(source))


def tenant_label(request: InferenceRequest) -> str:
    """The tenant as a metric label: a keys file bounds tenants; without one a tenant is a hash of
    whatever key the client sent (unbounded), so those all count as "anonymous"."""
    return request.tenant if request.key_id is not None else ANONYMOUS_TENANT


class FleetSource(Protocol):
    """What the fleet registry exposes about health (pools/registry.py FleetRegistry)."""

    @property
    def snapshot(self) -> Any: ...


class _FleetCollector(Collector):
    def __init__(self, source: FleetSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("fleetgate_instance_up", "1 while the instance is healthy and routed to, 0 while "
                               "it is ejected (failed probes or requests).", labels=["pool", "model", "instance"])
        snapshot = self._source.snapshot
        for name, pool in snapshot.pools.items():
            for endpoint in pool.endpoints:
                up.add_metric([name, pool.model, endpoint.name], 1.0 if snapshot.state(endpoint).healthy else 0.0)
        yield up


class OutlierSource(Protocol):
    """What the fleet registry exposes about passive health (its `outliers`, pools/outliers.py)."""

    @property
    def outliers(self) -> Any: ...


class _OutlierCollector(Collector):
    def __init__(self, source: OutlierSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        detector = self._source.outliers
        ejections = CounterMetricFamily("fleetgate_outlier_ejections", "Instances ejected by passive health, by "
                                        "reason (consecutive-failures, unreachable, latency, half-open-failure).",
                                        labels=["pool", "instance", "reason"])
        for key, count in detector.ejections.items():
            ejections.add_metric(list(key), count)
        trials = CounterMetricFamily("fleetgate_half_open_probes", "Single trial requests let through to an "
                                     "instance after its ejection, by outcome (success closes it, failure re-ejects "
                                     "it for longer).", labels=["pool", "instance", "outcome"])
        for key, count in detector.half_open_trials.items():
            trials.add_metric(list(key), count)
        backoffs = CounterMetricFamily("fleetgate_instance_backoffs", "Times an instance answered 429/503 with "
                                       "Retry-After and was left alone for that long.", labels=["pool", "instance"])
        for key, count in detector.backoffs.items():
            backoffs.add_metric(list(key), count)
        yield from (ejections, trials, backoffs)


class KvSource(Protocol):
    """What the fleet registry exposes about KV-event subscriptions (pools/kv_events.py KvStatus)."""

    def kv_status(self) -> Iterable[Any]: ...


class _KvCollector(Collector):
    def __init__(self, source: KvSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        labels = ["pool", "instance"]
        live = GaugeMetricFamily("fleetgate_kv_events_live", "1 while an instance's KV events are current (precise "
                                 "mode), 0 while routers fall back to their approximate view.", labels=labels)
        blocks = GaugeMetricFamily("fleetgate_kv_cached_blocks", "Prefix-cache blocks the instance's KV events say "
                                   "it holds.", labels=labels)
        batches = CounterMetricFamily("fleetgate_kv_event_batches", "KV event batches received.", labels=labels)
        events = CounterMetricFamily("fleetgate_kv_events", "KV events applied.", labels=labels)
        gaps = CounterMetricFamily("fleetgate_kv_event_gaps", "Sequence gaps (a mid-stream join included): each "
                                   "clears the view until the publisher resyncs.", labels=labels)
        for status in self._source.kv_status():
            key = [status.pool, status.instance]
            live.add_metric(key, 1.0 if status.live else 0.0)
            blocks.add_metric(key, status.blocks)
            batches.add_metric(key, status.batches)
            events.add_metric(key, status.events)
            gaps.add_metric(key, status.gaps)
        yield from (live, blocks, batches, events, gaps)


class CacheCounters(Protocol):
    """What the cache exposes for metrics (fleetgate.cache.semantic.SemanticCache)."""

    @property
    def stats(self) -> Any: ...

    def sizes(self) -> Mapping[Any, int]: ...


class _CacheCollector(Collector):
    def __init__(self, cache: CacheCounters) -> None:
        self._cache = cache

    def collect(self) -> Iterator[Metric]:
        stats = self._cache.stats
        entries = GaugeMetricFamily("fleetgate_cache_entries", "Semantic cache entries by category.", labels=["category"])
        by_category: dict[str, int] = {}
        for namespace, size in self._cache.sizes().items():
            by_category[namespace.category] = by_category.get(namespace.category, 0) + size
        for category, size in by_category.items():
            entries.add_metric([category], size)
        yield entries
        for name, documentation, counts in (
            ("fleetgate_cache_relaxed_hits", "Hits only the load-relaxed threshold allowed.", stats.relaxed_hits),
            ("fleetgate_cache_verifier_rejections", "Similarity candidates the verifier refused to serve "
             "(documents stored without their question included).", stats.verifier_rejections),
            ("fleetgate_cache_false_hits", "Hits clients reported wrong (POST /v1/cache/feedback); their entries "
             "were dropped.", stats.false_hits),
        ):
            per_category = CounterMetricFamily(name, documentation, labels=["category"])
            for category, count in counts.items():
                per_category.add_metric([category], count)
            yield per_category
        for name, documentation, label, counts in (
            ("fleetgate_cache_evictions", "Entries evicted, by reason (quota, expired, gone, deleted, feedback).", "reason",
             stats.evictions),
            ("fleetgate_cache_adaptations", "Load adaptations: relax when the pool went over SLO, restore when back.",
             "direction", stats.adaptations),
        ):
            family = CounterMetricFamily(name, documentation, labels=["category", label])
            for (category, value), count in counts.items():
                family.add_metric([category, value], count)
            yield family
        yield CounterMetricFamily("fleetgate_cache_store_unavailable", "Cache calls that found the document store down "
                                  "(each served as a miss).", value=stats.store_unavailable)
