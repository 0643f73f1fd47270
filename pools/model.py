"""The fleet as the gateway sees it: endpoints grouped in pools, and immutable load snapshots.

Configuration (`Endpoint`, `Pool`) is static; load (`EndpointState`) is refreshed in the
background and published as a new frozen `FleetSnapshot`, so the request path reads one
consistent picture without locks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, Mapping

from fleetgate.core.defaults import DEFAULT_GPU
from fleetgate.pools.profiles import GpuProfile, get_profile


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One vLLM instance: where it is, what it serves, on which hardware."""

    name: str
    url: str  # base URL without /v1, e.g. http://127.0.0.1:8001
    pool: str
    model: str
    gpu: str = DEFAULT_GPU
    max_context_tokens: int = 32768
    weight: float = 1.0  # relative capacity within its pool (virtual nodes on hash rings)
    gpu_profile: GpuProfile | None = None  # the fleet file's custom profile called `gpu`; None: the built-in one
    kv_events: str | None = None  # ZMQ address of its KV-cache events (precise mode), e.g. tcp://127.0.0.1:5557

    @property
    def profile(self) -> GpuProfile:
        return self.gpu_profile if self.gpu_profile is not None else get_profile(self.gpu)


@dataclass(frozen=True, slots=True)
class Pool:
    """Interchangeable instances serving one model on one kind of hardware."""

    name: str
    model: str
    endpoints: tuple[Endpoint, ...]
    tokenizer: str | None = None  # tokenizer.json its engines use (precise mode keys); None: character blocks
    api_key_env: str | None = None  # environment variable holding the key its instances expect (vllm --api-key)
    forward_client_key: bool = False  # send the client's own Authorization upstream (when no api_key_env)
    serves: Literal["generate", "embed"] = "generate"  # "generate" (chat, completions, messages, responses) or "embed" (embeddings)
    lora_adapters: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # name -> path to load it from
    runtime_lora_loading: bool = False  # the gateway may load its adapters on its instances

    @property
    def max_context_tokens(self) -> int:
        return max((e.max_context_tokens for e in self.endpoints), default=0)

    def upstream_authorization(self, environ: Mapping[str, str]) -> str | None:
        """`Bearer <key>` read from the variable the fleet file names (the file never holds the key);
        None when the pool names none. ValueError when the variable is unset: fail at start, not per request."""
        if self.api_key_env is None:
            return None
        value = environ.get(self.api_key_env, "")
        if not value:
            raise ValueError(f"pool {self.name!r}: api_key_env names {self.api_key_env}, which is not set (or "
                             "empty) in the gateway's environment")
        return f"Bearer {value}"


@dataclass(frozen=True, slots=True)
class EndpointState:
    """Health and load of one endpoint, as last probed and scraped."""

    healthy: bool = True
    waiting: int = 0  # vllm:num_requests_waiting
    running: int = 0  # vllm:num_requests_running
    kv_usage_ratio: float = 0.0  # vllm:kv_cache_usage_perc (0..1)
    prefix_queries_tokens: float = 0.0  # vllm:prefix_cache_queries_total
    prefix_hits_tokens: float = 0.0  # vllm:prefix_cache_hits_total
    kv_cache_tokens: int | None = None  # vllm:cache_config_info num_gpu_blocks x block_size; None: not exported
    scraped_at_s: float = 0.0
    adapters: frozenset[str] = frozenset()  # LoRA adapters it holds: /v1/models (with a parent), vllm:lora_requests_info


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """An immutable, versioned picture of every pool and the state of every endpoint."""

    version: int
    pools: Mapping[str, Pool]
    states: Mapping[str, EndpointState] = field(default_factory=lambda: MappingProxyType({}))

    def state(self, endpoint: Endpoint) -> EndpointState:
        return self.states.get(endpoint.name, EndpointState())

    def healthy(self, pool_name: str) -> tuple[Endpoint, ...]:
        """The pool's endpoints that are currently healthy (empty for an unknown pool)."""
        pool = self.pools.get(pool_name)
        if pool is None:
            return ()
        return tuple(e for e in pool.endpoints if self.state(e).healthy)

    def models(self) -> list[str]:
        """Every model served by some pool, sorted, without duplicates."""
        return sorted({p.model for p in self.pools.values()})
