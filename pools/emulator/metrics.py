"""The emulator's /metrics: vLLM's Prometheus names, types and labels (model_name, engine), and
vLLM's `vllm:cache_config_info` info gauge (its labels carry the KV capacity the gateway reads).

Gauges and counters are read from the engine at scrape time (one source of truth, no double
bookkeeping); latency histograms are observed as requests progress, in emulated seconds. Each
server has its own registry, so many servers live in one process.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleetgate.core.tokens import KV_BLOCK_TOKENS
from fleetgate.pools.emulator.engine import EngineStats
from fleetgate.pools.emulator.lora import LoraSlots

# vLLM v1's bucket boundaries (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                  20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
E2E_BUCKETS_S = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                 480.0, 960.0, 1920.0, 7680.0)
_LABELS = ("model_name", "engine")


class _EngineCollector(Collector):
    def __init__(self, stats: Callable[[], EngineStats], model_name: str) -> None:
        self._stats = stats
        self._labels = [model_name, "0"]

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        for name, doc, value in (
            ("vllm:num_requests_running", "Number of requests in model execution batches.", s.running),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", s.waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", s.kv_usage_ratio),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=_LABELS)
            gauge.add_metric(self._labels, value)
            yield gauge
        for name, doc, value in (
            ("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
             s.prefix_queries_tokens),
            ("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", s.prefix_hits_tokens),
            ("vllm:num_preemptions", "Cumulative number of preemption from the engine.", s.preemptions_total),
            ("vllm:prompt_tokens", "Number of prefill tokens processed.", s.prompt_tokens_total),
            ("vllm:generation_tokens", "Number of generation tokens processed.", s.generation_tokens_total),
        ):
            counter = CounterMetricFamily(name, doc, labels=_LABELS)
            counter.add_metric(self._labels, value)
            yield counter

    def describe(self) -> Iterator[Metric]:
        return iter(())  # values depend on the engine; nothing to check at registration


class _LoraCollector(Collector):
    """vLLM's `vllm:lora_requests_info` gauge: its labels name the adapters requests use now (running;
    the emulator queues none apart from the engine's own queue, so waiting is empty) and the slot count;
    its value is when it was taken, as vLLM sets it."""

    def __init__(self, lora: LoraSlots) -> None:
        self._lora = lora

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("vllm:lora_requests_info", "Running stats on lora requests.",
                                  labels=("max_lora", "running_lora_adapters", "waiting_lora_adapters"))
        gauge.add_metric([str(self._lora.max_loras), ",".join(self._lora.running()), ""], time.time())
        yield gauge

    def describe(self) -> Iterator[Metric]:
        return iter(())


class EmulatorMetrics:
    """The registry of one emulated instance."""

    def __init__(self, stats: Callable[[], EngineStats], model_name: str, *, num_gpu_blocks: int,
                 enable_prefix_caching: bool, lora: LoraSlots | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EngineCollector(stats, model_name))
        if lora is not None:
            self.registry.register(_LoraCollector(lora))
        Gauge(  # as vLLM v1 exports it: CacheConfig fields as labels, plus engine, no model_name
            "vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
            ("block_size", "enable_prefix_caching", "engine", "num_gpu_blocks"), registry=self.registry,
        ).labels(str(KV_BLOCK_TOKENS), str(enable_prefix_caching), "0", str(num_gpu_blocks)).set(1)
        labels = (model_name, "0")
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
            _LABELS, registry=self.registry, buckets=TTFT_BUCKETS_S,
        ).labels(*labels)
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
            _LABELS, registry=self.registry, buckets=E2E_BUCKETS_S,
        ).labels(*labels)

    def render(self) -> bytes:
        return generate_latest(self.registry)
