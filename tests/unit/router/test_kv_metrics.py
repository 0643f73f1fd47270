"""Precise mode in /metrics: each KV-event subscription's state, read from the registry at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from fleetgate.pools.kv_events import KvStatus
from fleetgate.router.metrics import GatewayMetrics


class Source:
    def __init__(self) -> None:
        self.states = [KvStatus("chat", "chat-0", True, 5, 12, 1, 40), KvStatus("chat", "chat-1", False, 0, 0, 0, 0)]

    def kv_status(self) -> list[KvStatus]:
        return self.states


def test_kv_subscriptions_are_exported_per_instance() -> None:
    registry = CollectorRegistry()
    source = Source()
    GatewayMetrics(registry).watch_kv(source)
    text = generate_latest(registry).decode()
    assert 'fleetgate_kv_events_live{instance="chat-0",pool="chat"} 1.0' in text
    assert 'fleetgate_kv_events_live{instance="chat-1",pool="chat"} 0.0' in text
    assert 'fleetgate_kv_event_gaps_total{instance="chat-0",pool="chat"} 1.0' in text
    assert 'fleetgate_kv_events_total{instance="chat-0",pool="chat"} 12.0' in text
    assert 'fleetgate_kv_cached_blocks{instance="chat-0",pool="chat"} 40.0' in text
    source.states = []
    assert "fleetgate_kv_events_live{" not in generate_latest(registry).decode()
