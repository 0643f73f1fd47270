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
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleetgate.core.defaults import DEFAULT_GPU
from fleetgate.core.yamlconf import load_yaml, parse_yaml
from fleetgate.pools.model import Endpoint, Pool
from fleetgate.pools.profiles import PROFILES, get_profile


class InstanceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    name: str | None = None
    weight: float = Field(default=1.0, gt=0)
    gpu: str | None = None  # overrides the pool's GPU profile for a mixed-hardware pool

    @field_validator("gpu")
    @classmethod
    def _known_instance_gpu(cls, gpu: str | None) -> str | None:
        if gpu is not None and gpu.lower() not in PROFILES:
            raise ValueError(f"unknown GPU profile {gpu!r}; known: {', '.join(sorted(PROFILES))}")
        return gpu.lower() if gpu else None

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url.rstrip("/").removesuffix("/v1")


class PoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    model: str
    gpu: str = DEFAULT_GPU
    max_context_tokens: int | None = Field(default=None, gt=0)
    backend: Literal["emulator", "vllm"] = "emulator"  # what `fleet up` starts for count/base_port pools
    instances: list[InstanceConfig] = []
    count: int | None = Field(default=None, gt=0)
    base_port: int | None = Field(default=None, gt=0, lt=65536)

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, gpu: str) -> str:
        if gpu.lower() not in PROFILES:
            raise ValueError(f"unknown GPU profile {gpu!r}; known: {', '.join(sorted(PROFILES))}")
        return gpu.lower()

    @model_validator(mode="after")
    def _instances_or_count(self) -> "PoolConfig":
        if bool(self.instances) == (self.count is not None):
            raise ValueError("give either `instances` (URLs) or `count` with `base_port`, not both")
        if self.count is not None and self.base_port is None:
            raise ValueError("`count` needs `base_port`")
        return self

    @property
    def context_tokens(self) -> int:
        return self.max_context_tokens or get_profile(self.gpu).max_model_len

    def instance_urls(self) -> list[tuple[str, float]]:
        """(url, weight) of every instance, generating loopback URLs for count/base_port pools."""
        if self.count is not None and self.base_port is not None:
            return [(f"http://127.0.0.1:{self.base_port + i}", 1.0) for i in range(self.count)]
        return [(i.url, i.weight) for i in self.instances]

    def to_pool(self) -> Pool:
        named = {i.url: i.name for i in self.instances if i.name}
        gpus = {i.url: i.gpu for i in self.instances if i.gpu}
        endpoints = tuple(
            Endpoint(
                name=named.get(url) or f"{self.name}-{index}",
                url=url,
                pool=self.name,
                model=self.model,
                gpu=gpus.get(url, self.gpu),
                max_context_tokens=self.context_tokens,
                weight=weight,
            )
            for index, (url, weight) in enumerate(self.instance_urls())
        )
        return Pool(name=self.name, model=self.model, endpoints=endpoints)


class FleetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pools: list[PoolConfig] = Field(min_length=1)

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

    def to_pools(self) -> dict[str, Pool]:
        return {p.name: p.to_pool() for p in self.pools}


def load_fleet(path: str | Path) -> FleetConfig:
    return load_yaml(path, FleetConfig)


def parse_fleet(text: str, source: str = "<string>") -> FleetConfig:
    return parse_yaml(text, FleetConfig, source)


def single_pool_fleet(urls: list[str], model: str, gpu: str = DEFAULT_GPU, name: str = "default") -> FleetConfig:
    """The quick-start fleet: one pool of the given worker URLs (`fleetgate serve --worker-urls`)."""
    return FleetConfig(pools=[PoolConfig(name=name, model=model, gpu=gpu, instances=[InstanceConfig(url=u) for u in urls])])


def fleet_from_pools(pools: Mapping[str, Pool]) -> FleetConfig:
    """The fleet file of pools that are already running (e.g. an emulated fleet on free ports)."""
    return FleetConfig(pools=[
        PoolConfig(
            name=pool.name,
            model=pool.model,
            gpu=pool.endpoints[0].gpu,
            max_context_tokens=pool.max_context_tokens,
            instances=[InstanceConfig(url=e.url, name=e.name, weight=e.weight, gpu=e.gpu) for e in pool.endpoints],
        )
        for pool in pools.values()
    ])


def dump_fleet(config: FleetConfig) -> str:
    """YAML text that `load_fleet` reads back to an equal config."""
    return yaml.safe_dump(config.model_dump(exclude_none=True, exclude_defaults=True), sort_keys=False)
