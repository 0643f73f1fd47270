"""KV capacity from vLLM's `vllm:cache_config_info` info gauge, in the label format vLLM v1 exports."""

from fleetgate.pools.scrape import parse_vllm_metrics

# vLLM v1 (vllm/v1/metrics/loggers.py log_metrics_info): CacheConfig.metrics_info() as labels, plus engine
REAL_CACHE_CONFIG = """# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",calculate_kv_scales="False",cpu_offload_gb="0",\
enable_prefix_caching="True",engine="0",gpu_memory_utilization="0.9",is_attention_free="False",\
kv_sharing_fast_prefill="False",mamba_block_size="None",mamba_cache_dtype="auto",num_cpu_blocks="None",\
num_gpu_blocks="27471",num_gpu_blocks_override="None",prefix_caching_hash_algo="sha256",sliding_window="None",\
swap_space="4",swap_space_bytes="4294967296"} 1.0
vllm:num_requests_running{engine="0",model_name="m"} 2.0
"""


def test_capacity_is_blocks_times_block_size():
    load = parse_vllm_metrics(REAL_CACHE_CONFIG)
    assert load.kv_cache_tokens == 27471 * 16 and load.running == 2


def test_engines_add_up_and_override_labels_are_not_the_block_count():
    text = (
        'vllm:cache_config_info{block_size="32",engine="0",num_gpu_blocks="100",num_gpu_blocks_override="7"} 1.0\n'
        'vllm:cache_config_info{block_size="32",engine="1",num_gpu_blocks_override="7",num_gpu_blocks="50"} 1.0\n'
    )
    assert parse_vllm_metrics(text).kv_cache_tokens == 150 * 32


def test_unknown_capacity_is_none():
    assert parse_vllm_metrics("vllm:num_requests_running 1\n").kv_cache_tokens is None
    unprofiled = 'vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="None"} 1.0\n'
    assert parse_vllm_metrics(unprofiled).kv_cache_tokens is None
