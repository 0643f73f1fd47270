"""Hardware profiles: how fast one vLLM instance serving a 7-8B model runs on a given GPU.

Shared by the emulator engine (step times), the DualMap TTFT estimator (expected prefill time)
and policy checks (can a pool meet an SLO at a context length). All figures are for
Llama-3.1-8B-Instruct in bf16 (16 GB of weights, 128 KiB of KV per token: 32 layers x 8 KV
heads x 128 dims x 2 (K and V) x 2 bytes), gpu_memory_utilization 0.9.

Model of one engine step (continuous batching, chunked prefill):
    step_s = step_overhead_s
           + prefill_tokens / prefill_tokens_per_s
           + decode_seqs * decode_per_seq_s
           + context_tokens * decode_per_context_token_s
`step_overhead_s` is the weight-read floor of a decode step (memory bound: weights / HBM
bandwidth, plus launch overhead); the context term is reading the batch's KV cache.

Sources for the figures (rounded; cross-checked against each other):
- Peak dense bf16 throughput and HBM bandwidth: NVIDIA H100 SXM datasheet (989 TFLOP/s,
  3.35 TB/s), A100 40GB datasheet (312 TFLOP/s, 1.56 TB/s), L4 datasheet (121 TFLOP/s, 300 GB/s).
- Prefill at ~50-60% MFU for 16 GFLOP/token is what vLLM's published performance dashboard
  (vLLM "Performance Benchmarks", Llama-3-8B, H100) and the vLLM v0.6 blog ("vLLM v0.6.0: 2.7x
  throughput improvement", Sept 2024) show: ~10-20 ms TTFT for a 512-token prompt on H100.
- Decode at batch 1: ~6-7 ms/token on H100, ~12 ms on A100-40GB, ~55-60 ms on L4 for 8B bf16,
  matching the same dashboard and the Anyscale/LLMPerf and Databricks "LLM inference performance
  engineering" write-ups (latency ~ weights / bandwidth at small batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

KV_BYTES_PER_TOKEN = 131_072
"""Llama-3.1-8B: 32 layers x 8 KV heads x 128 dims x 2 (K, V) x 2 bytes."""


@dataclass(frozen=True, slots=True)
class GpuProfile:
    """Speed and memory of one vLLM instance on one GPU kind (see the module docstring)."""

    name: str
    prefill_tokens_per_s: float
    step_overhead_s: float
    decode_per_seq_s: float
    decode_per_context_token_s: float
    kv_cache_tokens: int
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 32768

    @property
    def kv_cache_blocks(self) -> int:
        """16-token KV blocks that fit in the cache."""
        return self.kv_cache_tokens // 16

    def step_time_s(self, prefill_tokens: int, decode_seqs: int, context_tokens: int) -> float:
        """Duration of one engine step that prefills `prefill_tokens` and decodes `decode_seqs`
        sequences whose KV caches hold `context_tokens` in total."""
        return (
            self.step_overhead_s
            + prefill_tokens / self.prefill_tokens_per_s
            + decode_seqs * self.decode_per_seq_s
            + context_tokens * self.decode_per_context_token_s
        )

    def prefill_time_s(self, tokens: int) -> float:
        """Time to prefill `tokens` alone, in chunks of max_num_batched_tokens (no queueing)."""
        if tokens <= 0:
            return 0.0
        chunks = -(-tokens // self.max_num_batched_tokens)
        return chunks * self.step_overhead_s + tokens / self.prefill_tokens_per_s


def _kv_tokens(gpu_memory_gb: float) -> int:
    """KV tokens left after 16 GB of weights at gpu_memory_utilization 0.9 (2 GB activations)."""
    free_bytes = (gpu_memory_gb * 0.9 - 16.0 - 2.0) * 1e9
    return int(free_bytes // KV_BYTES_PER_TOKEN)


H100_80GB = GpuProfile(
    name="h100",
    prefill_tokens_per_s=30_000.0,  # 16 GFLOP/token at ~50% of 989 TFLOP/s
    step_overhead_s=0.0055,  # 16 GB / 3.35 TB/s = 4.8 ms + launch overhead
    decode_per_seq_s=0.00004,
    decode_per_context_token_s=40e-9,  # 128 KiB per token / 3.35 TB/s
    kv_cache_tokens=_kv_tokens(80),
)

A100_40GB = GpuProfile(
    name="a100",
    prefill_tokens_per_s=10_000.0,  # 16 GFLOP/token at ~50% of 312 TFLOP/s
    step_overhead_s=0.0115,  # 16 GB / 1.56 TB/s = 10.3 ms + launch overhead
    decode_per_seq_s=0.00008,
    decode_per_context_token_s=85e-9,
    kv_cache_tokens=_kv_tokens(40),
    max_model_len=16384,
)

L4_24GB = GpuProfile(
    name="l4",
    prefill_tokens_per_s=3_500.0,  # 16 GFLOP/token at ~45% of 121 TFLOP/s
    step_overhead_s=0.056,  # 16 GB / 300 GB/s = 53 ms + launch overhead
    decode_per_seq_s=0.0003,
    decode_per_context_token_s=440e-9,
    kv_cache_tokens=_kv_tokens(24),
    max_num_seqs=64,
    max_num_batched_tokens=4096,
    max_model_len=8192,
)

PROFILES: dict[str, GpuProfile] = {p.name: p for p in (H100_80GB, A100_40GB, L4_24GB)}


def get_profile(name: str, custom: Mapping[str, GpuProfile] | None = None) -> GpuProfile:
    """The profile called `name`: built in (h100, a100, l4) or one of `custom` (a fleet file's
    `gpus:`, pools/gpus.py); a clear error lists the known ones."""
    key = name.lower()
    profile = PROFILES.get(key) or (custom.get(key) if custom else None)
    if profile is None:
        known = sorted({*PROFILES, *(custom or {})})
        raise ValueError(f"unknown GPU profile {name!r}; known: {', '.join(known)}")
    return profile
