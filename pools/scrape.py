"""vLLM `/metrics` text -> the neutral load figures the router uses.

Only the handful of series we need are read, with a line scan instead of a full Prometheus parser
(a scrape of a busy vLLM is ~100 KB and this runs every half second per instance). Values of the
same metric across label sets (engines, models) are summed. Both the current name
(`vllm:kv_cache_usage_perc`) and the pre-v1 one (`vllm:gpu_cache_usage_perc`) are understood.

KV capacity comes from vLLM's info gauge `vllm:cache_config_info{block_size="16",
num_gpu_blocks="8192",...} 1`: its labels are the engine's CacheConfig, and num_gpu_blocks x
block_size is how many tokens of KV the instance really holds (the profile's figure is a guess).
`num_gpu_blocks="None"` (not yet profiled) counts as unknown.

LoRA: `vllm:lora_requests_info{running_lora_adapters="a,b",waiting_lora_adapters="c",max_lora="2"}`
names the adapters the instance's requests use now, so it holds them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WANTED = {
    "vllm:num_requests_waiting": "waiting",
    "vllm:num_requests_running": "running",
    "vllm:kv_cache_usage_perc": "kv_usage_ratio",
    "vllm:gpu_cache_usage_perc": "kv_usage_ratio",
    "vllm:prefix_cache_queries_total": "prefix_queries_tokens",
    "vllm:prefix_cache_hits_total": "prefix_hits_tokens",
}
_CACHE_CONFIG = "vllm:cache_config_info{"
_LORA_INFO = "vllm:lora_requests_info{"
_LORA_ADAPTERS = re.compile(r'[{,](?:running|waiting)_lora_adapters="([^"]*)"')
_NUM_GPU_BLOCKS = re.compile(r'[{,]num_gpu_blocks="(\d+)"')
_BLOCK_SIZE = re.compile(r'[{,]block_size="(\d+)"')


@dataclass(frozen=True, slots=True)
class ScrapedLoad:
    waiting: int = 0
    running: int = 0
    kv_usage_ratio: float = 0.0
    prefix_queries_tokens: float = 0.0
    prefix_hits_tokens: float = 0.0
    kv_cache_tokens: int | None = None  # num_gpu_blocks x block_size, summed over engines; None: not exported
    lora_adapters: frozenset[str] = frozenset()  # adapters its requests use now (vllm:lora_requests_info)


def parse_vllm_metrics(text: str) -> ScrapedLoad:
    """Sum each wanted series over its label sets; unknown or malformed lines are ignored."""
    totals: dict[str, float] = {}
    kv_cache_tokens: int | None = None
    adapters: set[str] = set()
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        if line.startswith(_CACHE_CONFIG):
            blocks, block_size = _NUM_GPU_BLOCKS.search(line), _BLOCK_SIZE.search(line)
            if blocks and block_size:
                kv_cache_tokens = (kv_cache_tokens or 0) + int(blocks.group(1)) * int(block_size.group(1))
            continue
        if line.startswith(_LORA_INFO):
            adapters.update(n for found in _LORA_ADAPTERS.findall(line) for n in found.split(",") if n)
            continue
        name_end = line.find("{")
        if name_end < 0:
            name_end = line.find(" ")
        field = _WANTED.get(line[:name_end])
        if field is None:
            continue
        try:
            value = float(line[line.rindex("}") + 1 if "}" in line else name_end :].split()[0])
        except (ValueError, IndexError):
            continue
        totals[field] = totals.get(field, 0.0) + value
    return ScrapedLoad(
        waiting=int(totals.get("waiting", 0)),
        running=int(totals.get("running", 0)),
        kv_usage_ratio=totals.get("kv_usage_ratio", 0.0),
        prefix_queries_tokens=totals.get("prefix_queries_tokens", 0.0),
        prefix_hits_tokens=totals.get("prefix_hits_tokens", 0.0),
        kv_cache_tokens=kv_cache_tokens,
        lora_adapters=frozenset(adapters),
    )
