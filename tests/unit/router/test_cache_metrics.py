"""The semantic cache's own counters, exported at scrape time."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from fleetgate.cache.index import Namespace
from fleetgate.cache.stats import CacheStats
from fleetgate.router.metrics import GatewayMetrics


class Cache:
    def __init__(self) -> None:
        self.stats = CacheStats()

    def sizes(self) -> dict[Any, int]:
        return {Namespace("t1", "m", "faq"): 3}


def test_verifier_rejections_and_false_hits_are_exported_per_category() -> None:
    registry = CollectorRegistry()
    cache = Cache()
    GatewayMetrics(registry).watch_cache(cache)
    cache.stats.verifier_rejections["faq"] += 2
    cache.stats.false_hits["faq"] += 1
    cache.stats.evictions[("faq", "feedback")] += 1
    text = generate_latest(registry).decode()
    assert 'fleetgate_cache_verifier_rejections_total{category="faq"} 2.0' in text
    assert 'fleetgate_cache_false_hits_total{category="faq"} 1.0' in text
    assert 'fleetgate_cache_evictions_total{category="faq",reason="feedback"} 1.0' in text
    assert 'fleetgate_cache_entries{category="faq"} 3.0' in text
