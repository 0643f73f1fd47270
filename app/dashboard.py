"""The Grafana dashboard, as code: its panels and their PromQL, and the JSON Grafana imports.

`PANELS` is the one list of what the dashboard shows. `fleetgate observe dashboard` writes the JSON
(deploy/grafana/fleetgate.json, checked against this module by a test), `fleetgate observe panels`
renders the same queries with matplotlib, and the real-Prometheus test asks Prometheus for each of
them, so a renamed metric fails CI. Queries use Grafana's `$__rate_interval`; `query_for` puts a
fixed window in its place for anything that is not Grafana.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RATE_WINDOW = "$__rate_interval"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


@dataclass(frozen=True, slots=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    unit: str  # Grafana's unit id: s, percentunit, reqps, short
    queries: tuple[Query, ...]
    description: str


def _quantiles(metric: str, by: str) -> tuple[Query, ...]:
    return tuple(Query(f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket[{RATE_WINDOW}])))",
                       f"p{int(q * 100)} {{{{{by}}}}}") for q in (0.5, 0.9, 0.99))


PANELS: tuple[Panel, ...] = (
    Panel("TTFT per pool", "s", _quantiles("fleetgate_time_to_first_token_seconds", "pool"),
          "Gateway arrival to the first upstream byte: p50, p90, p99."),
    Panel("TPOT per pool", "s", _quantiles("fleetgate_time_per_output_token_seconds", "pool"),
          "Mean gap between streamed chunks after the first: p50, p90, p99."),
    Panel("TTFT SLO attainment", "percentunit", (Query(
        f'sum by (pool) (rate(fleetgate_ttft_slo_requests_total{{outcome="met"}}[{RATE_WINDOW}])) '
        f"/ sum by (pool) (rate(fleetgate_ttft_slo_requests_total[{RATE_WINDOW}]))", "{{pool}}"),),
          "Share of requests with a TTFT SLO whose first token came in time."),
    Panel("Route reasons", "reqps", (Query(
        f"sum by (reason) (rate(fleetgate_route_decisions_total[{RATE_WINDOW}]))", "{{reason}}"),),
          "Why each request went where it went: affinity, hotspot, fallback, spill (+spill: a later pool), "
          "resend."),
    Panel("Semantic cache lookups per category", "reqps", (Query(
        f"sum by (category, outcome) (rate(fleetgate_cache_lookups_total[{RATE_WINDOW}]))",
        "{{category}} {{outcome}}"),), "Hits, misses and bypasses of the semantic cache, per category."),
    Panel("Cache hit similarity per category", "short", (Query(
        f"histogram_quantile(0.5, sum by (category, le) (rate(fleetgate_cache_hit_similarity_bucket[{RATE_WINDOW}])))",
        "p50 {{category}}"),), "Median similarity of the question and the cached one, of cache hits."),
    Panel("Instance load (vLLM)", "short", (
        Query("sum by (instance) (vllm:num_requests_running)", "running {{instance}}"),
        Query("sum by (instance) (vllm:num_requests_waiting)", "waiting {{instance}}")),
          "Requests each vLLM instance is running and queueing, from its own /metrics."),
    Panel("KV-cache usage (vLLM)", "percentunit", (Query(
        "max by (instance) (vllm:kv_cache_usage_perc)", "{{instance}}"),),
          "Share of each instance's KV cache in use, from its own /metrics."),
    Panel("Upstream errors", "reqps", (Query(
        f"sum by (pool, kind) (rate(fleetgate_upstream_errors_total[{RATE_WINDOW}]))", "{{pool}} {{kind}}"),),
          "Refused, 5xx, timed out and broken calls to instances (client-gone: the client left first)."),
    Panel("Retries", "reqps", (Query(
        f"sum by (pool) (rate(fleetgate_retries_total[{RATE_WINDOW}]))", "{{pool}}"),),
          "Requests re-sent to another instance before their first byte."),
    Panel("Instances up", "short", (Query("min by (pool, instance) (fleetgate_instance_up)", "{{pool}} {{instance}}"),),
          "1: healthy and routed to; 0: ejected."),
    Panel("Admission shed", "reqps", (Query(
        f"sum by (pools, reason) (rate(fleetgate_admission_shed_total[{RATE_WINDOW}]))", "{{pools}} {{reason}}"),),
          "Requests admission refused: queue full (429) or SLO passed (503)."),
)


def query_for(query: Query, window: str) -> str:
    """The query with a fixed rate window in place of Grafana's `$__rate_interval`."""
    return query.expr.replace(RATE_WINDOW, window)


def dashboard() -> dict[str, Any]:
    """The dashboard as Grafana's import JSON (it asks for the Prometheus data source on import)."""
    width, height = 12, 8
    panels = [{
        "id": index + 1, "type": "timeseries", "title": panel.title, "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"x": (index % 2) * width, "y": (index // 2) * height, "w": width, "h": height},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [{"refId": chr(ord("A") + n), "datasource": DATASOURCE, "expr": q.expr, "legendFormat": q.legend}
                    for n, q in enumerate(panel.queries)],
    } for index, panel in enumerate(PANELS)]
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource", "pluginId": "prometheus",
                      "pluginName": "Prometheus"}],
        "title": "Fleetgate", "uid": "fleetgate", "tags": ["fleetgate", "vllm"], "timezone": "browser",
        "schemaVersion": 39, "version": 1, "refresh": "30s", "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": []}, "annotations": {"list": []}, "editable": True, "panels": panels,
    }
