"""The fleet file: pools of vLLM instances, read by the gateway and by `fleetgate fleet up`.

One format serves both: a pool either lists its instances' URLs (a real fleet) or asks for
`count` instances on consecutive loopback ports from `base_port` (an emulated or local fleet,
which `fleet up` starts and the gateway then finds at the same URLs).

    pools:
      - name: chat-small
        model: llama-3.1-8b
        gpu: l4
        count: 2
        base_port: 8101
      - name: long-context
        model: llama-3.1-8b
        gpu: h100
        max_context_tokens: 32768
        instances:
          - url: http://10.0.0.7:8000
            weight: 2
            kv_events: tcp://10.0.0.7:5557   # its KV-cache events (precise mode)

A pool may instead name where Kubernetes keeps its instances (`kubernetes:`): the ready endpoints of
the EndpointSlices in `namespace` matching `selector` (pools/k8s.py), followed live:

      - name: chat-k8s
        model: llama-3.1-8b
        kubernetes:
          namespace: llm
          selector: app=vllm,model=llama-3-1-8b
          port: http            # the EndpointSlice port's name or number (default: its first port)

Precise mode (docs/routing.md): an instance's `kv_events` is the ZMQ address its vLLM publishes
KV-cache events on (`--kv-events-config`); a count/base_port pool's `kv_events_base_port` gives
instance i `tcp://127.0.0.1:<kv_events_base_port + i>` (what `fleet up` makes its emulators
publish on). A pool's `tokenizer` names the tokenizer.json its engines use, so the gateway keys
prompts with the same token ids; without it, the emulator's character blocks.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, Mapping

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    StringConstraints,
    field_validator,
    model_validator,
)

from fleetgate.core.defaults import DEFAULT_GPU
from fleetgate.core.yamlconf import load_yaml, parse_yaml
from fleetgate.pools.gpus import (
    GPU_NAME_PATTERN,
    GpuProfileConfig,
    custom_gpu_names,
    known_gpu,
    not_built_in,
)
from fleetgate.pools.model import Endpoint, Pool
from fleetgate.pools.profiles import GpuProfile, get_profile


class InstanceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    name: str | None = None
    weight: float = Field(default=1.0, gt=0)
    gpu: str | None = None  # overrides the pool's GPU profile for a mixed-hardware pool
    kv_events: str | None = Field(default=None, pattern=r"^(tcp|ipc)://.+")  # ZMQ address of its KV events

    @field_validator("gpu")
    @classmethod
    def _known_instance_gpu(cls, gpu: str | None) -> str | None:
        return known_gpu(gpu) if gpu else None

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url.rstrip("/").removesuffix("/v1")


class KubernetesSource(BaseModel):
    """Where a pool's instances come from in Kubernetes: the ready endpoints of the EndpointSlices in
    `namespace` whose labels match `selector` (a label selector, as `kubectl get -l` takes it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    selector: str = Field(min_length=1)
    port: str | int | None = None  # the slice port's name or number; None: its first port
    scheme: Literal["http", "https"] = "http"


class PoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    model: str
    gpu: str = DEFAULT_GPU
    max_context_tokens: int | None = Field(default=None, gt=0)
    backend: Literal["emulator", "vllm"] = "emulator"  # what `fleet up` starts for count/base_port pools
    instances: list[InstanceConfig] = []
    count: int | None = Field(default=None, gt=0)
    kubernetes: KubernetesSource | None = None  # instances from EndpointSlices (pools/k8s.py), followed live
    base_port: int | None = Field(default=None, gt=0, lt=65536)
    kv_events_base_port: int | None = Field(default=None, gt=0, lt=65536)  # count pools: instance i publishes on +i
    tokenizer: str | None = None  # path of the engines' tokenizer.json (precise-mode keys)
    # The key the instances expect (vllm --api-key), by the NAME of the gateway's environment variable that
    # holds it: a fleet file is shared and committed, a key must not be.
    api_key_env: str | None = None
    forward_client_key: bool = False  # send the client's own Authorization upstream instead (never by default)
    # What its model is for: "embed" pools (an embedding model, vllm --runner pooling) take /v1/embeddings;
    # "generate" pools take everything that generates text. /tokenize goes to either.
    serves: Literal["generate", "embed"] = "generate"
    # LoRA adapters of its model (router/lora.py): name -> the path its instances load it from. Instances list
    # what they hold (/v1/models); with runtime_lora_loading the gateway loads a named adapter where none does
    # (vLLM's /v1/load_lora_adapter; the instances need VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).
    lora_adapters: dict[str, str] = {}
    runtime_lora_loading: bool = False

    @field_validator("api_key_env", mode="before")
    @classmethod
    def _a_variable_name(cls, value: Any) -> Any:
        if isinstance(value, str) and not re.fullmatch(r"[A-Z_][A-Z0-9_]{0,127}", value):
            raise ValueError("names the environment variable that holds the key (e.g. POOL_A_API_KEY), never "
                             "the key itself: upper-case letters, digits and _")
        return value

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, gpu: str) -> str:
        return known_gpu(gpu)

    @model_validator(mode="after")
    def _instances_or_count(self) -> "PoolConfig":
        if sum((bool(self.instances), self.count is not None, self.kubernetes is not None)) != 1:
            raise ValueError("give one of `instances` (URLs), `count` with `base_port`, or `kubernetes` "
                             "(a namespace and label selector)")
        if self.count is not None and self.base_port is None:
            raise ValueError("`count` needs `base_port`")
        if self.kv_events_base_port is not None and self.count is None:
            raise ValueError("`kv_events_base_port` is for count/base_port pools; give instances `kv_events`")
        if self.api_key_env is not None and self.forward_client_key:
            raise ValueError("give `api_key_env` (the pool's own key) or `forward_client_key`, not both")
        return self

    def context_tokens(self, custom: Mapping[str, GpuProfile] | None = None) -> int:
        return self.max_context_tokens or get_profile(self.gpu, custom).max_model_len

    def instance_urls(self) -> list[tuple[str, float]]:
        """(url, weight) of every instance, generating loopback URLs for count/base_port pools."""
        if self.count is not None and self.base_port is not None:
            return [(f"http://127.0.0.1:{self.base_port + i}", 1.0) for i in range(self.count)]
        return [(i.url, i.weight) for i in self.instances]

    def kv_events_urls(self) -> list[str | None]:
        """Each instance's KV-events address, in `instance_urls` order (None: it publishes none)."""
        if self.count is not None:
            base = self.kv_events_base_port
            return [None if base is None else f"tcp://127.0.0.1:{base + i}" for i in range(self.count)]
        return [i.kv_events for i in self.instances]

    def to_pool(self, custom: Mapping[str, GpuProfile] | None = None) -> Pool:
        """The pool's endpoints; `custom`: the fleet file's own GPU profiles by name."""
        named = {i.url: i.name for i in self.instances if i.name}
        gpus = {i.url: i.gpu for i in self.instances if i.gpu}
        endpoints = tuple(
            self.endpoint(url, named.get(url) or f"{self.name}-{index}", custom, weight=weight,
                          gpu=gpus.get(url), kv_events=kv_events)
            for index, ((url, weight), kv_events) in enumerate(zip(self.instance_urls(), self.kv_events_urls()))
        )
        return self.with_endpoints(endpoints)

    def endpoint(self, url: str, name: str, custom: Mapping[str, GpuProfile] | None = None, *, weight: float = 1.0,
                 gpu: str | None = None, kv_events: str | None = None) -> Endpoint:
        """One instance of this pool (also one added live: the admin API, Kubernetes discovery)."""
        gpu = gpu or self.gpu
        return Endpoint(name=name, url=url, pool=self.name, model=self.model, gpu=gpu,
                        gpu_profile=custom.get(gpu) if custom else None,
                        max_context_tokens=self.context_tokens(custom), weight=weight, kv_events=kv_events)

    def with_endpoints(self, endpoints: tuple[Endpoint, ...]) -> Pool:
        """This pool with `endpoints` as its instances."""
        return Pool(name=self.name, model=self.model, endpoints=endpoints, tokenizer=self.tokenizer,
                    api_key_env=self.api_key_env, forward_client_key=self.forward_client_key, serves=self.serves,
                    lora_adapters=MappingProxyType(dict(self.lora_adapters)), runtime_lora_loading=self.runtime_lora_loading)


class FleetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # custom GPU profiles by name (pools/gpus.py), beside the built-in h100, a100 and l4
    gpus: dict[Annotated[str, StringConstraints(pattern=GPU_NAME_PATTERN), AfterValidator(not_built_in)],
               GpuProfileConfig] = {}
    pools: list[PoolConfig] = Field(min_length=1)

    @model_validator(mode="wrap")
    @classmethod
    def _pools_may_use_custom_gpus(cls, data: Any, handler: ModelWrapValidatorHandler["FleetConfig"]) -> "FleetConfig":
        gpus = data.get("gpus") if isinstance(data, dict) else None
        with custom_gpu_names(gpus if isinstance(gpus, dict) else ()):
            return handler(data)

    @model_validator(mode="after")
    def _unique_names_and_ports(self) -> "FleetConfig":
        names = [p.name for p in self.pools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"pool names must be unique; repeated: {', '.join(duplicates)}")
        urls = [url for p in self.pools for url, _ in p.instance_urls()]
        repeated = sorted({u for u in urls if urls.count(u) > 1})
        if repeated:
            raise ValueError(f"each instance URL may appear once; repeated: {', '.join(repeated)}")
        return self

    def profiles(self) -> dict[str, GpuProfile]:
        """The custom GPU profiles by name."""
        return {name: gpu.to_profile(name) for name, gpu in self.gpus.items()}

    def to_pools(self) -> dict[str, Pool]:
        custom = self.profiles()
        return {p.name: p.to_pool(custom) for p in self.pools}


def load_fleet(path: str | Path) -> FleetConfig:
    return load_yaml(path, FleetConfig)


def parse_fleet(text: str, source: str = "<string>") -> FleetConfig:
    return parse_yaml(text, FleetConfig, source)


def single_pool_fleet(urls: list[str], model: str, gpu: str = DEFAULT_GPU, name: str = "default") -> FleetConfig:
    """The quick-start fleet: one pool of the given worker URLs (`fleetgate serve --worker-urls`)."""
    return FleetConfig(pools=[PoolConfig(name=name, model=model, gpu=gpu, instances=[InstanceConfig(url=u) for u in urls])])


def fleet_from_pools(pools: Mapping[str, Pool]) -> FleetConfig:
    """The fleet file of pools that are already running (e.g. an emulated fleet on free ports)."""
    custom = {e.gpu: e.gpu_profile for pool in pools.values() for e in pool.endpoints if e.gpu_profile is not None}
    gpus = {name: GpuProfileConfig.from_profile(profile) for name, profile in custom.items()}
    with custom_gpu_names(gpus):
        return FleetConfig(gpus=gpus, pools=[_running_pool(pool) for pool in pools.values()])


def _running_pool(pool: Pool) -> PoolConfig:
    return PoolConfig(
        name=pool.name,
        model=pool.model,
        gpu=pool.endpoints[0].gpu,
        max_context_tokens=pool.max_context_tokens,
        instances=[InstanceConfig(url=e.url, name=e.name, weight=e.weight, gpu=e.gpu, kv_events=e.kv_events)
                   for e in pool.endpoints],
        tokenizer=pool.tokenizer,
        api_key_env=pool.api_key_env,
        forward_client_key=pool.forward_client_key,
        serves=pool.serves,
        lora_adapters=dict(pool.lora_adapters),
        runtime_lora_loading=pool.runtime_lora_loading,
    )


def dump_fleet(config: FleetConfig) -> str:
    """YAML text that `load_fleet` reads back to an equal config."""
    return yaml.safe_dump(config.model_dump(exclude_none=True, exclude_defaults=True), sort_keys=False)
