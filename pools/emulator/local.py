"""Emulated fleets in this process, for tests and benchmarks (pools/emulator/launcher.py runs
them in a child process).

    async with run_emulated_fleet([("chat", "llama-3.1-8b", "l4", 2)], time_scale=0.1) as fleet:
        fleet.urls            # ["http://127.0.0.1:PORT", ...]
        fleet.pools()         # {"chat": Pool(...)} for the gateway
        fleet.server(url)     # the EmulatorServer (engine stats, fault knob)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence

from fleetgate.pools.config import FleetConfig
from fleetgate.pools.emulator.server import EmulatorServer
from fleetgate.pools.gpus import GpuProfileConfig
from fleetgate.pools.model import Endpoint, Pool
from fleetgate.pools.profiles import GpuProfile


@dataclass(frozen=True, slots=True)
class EmulatedPoolSpec:
    """`count` emulated instances of `model` on `gpu`; ports from `base_port` or free ones."""

    name: str
    model: str
    gpu: str
    count: int = 1
    base_port: int | None = None
    max_model_len: int | None = None
    kv_events_base_port: int | None = None  # instance i publishes KV events on tcp://host:<this + i>
    gpu_profile: GpuProfile | None = None  # a fleet file's custom profile called `gpu`; None: the built-in one
    serves: str = "generate"  # "embed": an embedding model (EmulatorServer `serves`)
    max_loras: int = 0  # LoRA adapter slots per instance; 0: no LoRA (EmulatorServer `max_loras`)

    @classmethod
    def parse(cls, text: str) -> "EmulatedPoolSpec":
        """NAME:MODEL:GPU:COUNT[:KV_EVENTS_BASE_PORT], the command-line form."""
        parts = text.split(":")
        if len(parts) not in (4, 5) or not all(p.isdigit() for p in parts[3:]):
            raise ValueError(f"pool spec {text!r} is not NAME:MODEL:GPU:COUNT[:KV_EVENTS_BASE_PORT]")
        return cls(parts[0], parts[1], parts[2], int(parts[3]), kv_events_base_port=int(parts[4]) if len(parts) == 5 else None)

    def to_arg(self) -> str:
        kv = f":{self.kv_events_base_port}" if self.kv_events_base_port else ""
        return f"{self.name}:{self.model}:{self.gpu}:{self.count}{kv}"


PoolSpecLike = EmulatedPoolSpec | tuple[Any, ...]


def as_spec(spec: PoolSpecLike) -> EmulatedPoolSpec:
    return spec if isinstance(spec, EmulatedPoolSpec) else EmulatedPoolSpec(*spec)


def build_pool(name: str, model: str, gpu: str, urls: Sequence[str], max_context_tokens: int,
               kv_events: Sequence[str | None] = (), gpu_profile: GpuProfile | None = None) -> Pool:
    """A Pool of emulated instances, endpoints named POOL-INDEX; `kv_events` their event addresses."""
    return Pool(name, model, tuple(
        Endpoint(name=f"{name}-{i}", url=url, pool=name, model=model, gpu=gpu, gpu_profile=gpu_profile,
                 max_context_tokens=max_context_tokens,
                 kv_events=kv_events[i] if i < len(kv_events) else None)
        for i, url in enumerate(urls)
    ))


def specs_from_fleet(config: FleetConfig) -> list[EmulatedPoolSpec]:
    """The emulator pools of a fleet file (pools with `count`; URL lists and vLLM pools are not ours)."""
    custom = config.profiles()
    return [
        EmulatedPoolSpec(p.name, p.model, p.gpu, p.count, p.base_port, p.max_context_tokens, p.kv_events_base_port,
                         custom.get(p.gpu), p.serves)
        for p in config.pools
        if p.count is not None and p.backend == "emulator"
    ]


class EmulatedFleet:
    """Running emulator servers grouped by pool."""

    def __init__(self) -> None:
        self._servers: dict[str, EmulatorServer] = {}
        self._pools: dict[str, tuple[EmulatedPoolSpec, list[str]]] = {}

    @property
    def urls(self) -> list[str]:
        return list(self._servers)

    def server(self, url: str) -> EmulatorServer:
        return self._servers[url.rstrip("/").removesuffix("/v1")]

    def servers(self) -> list[EmulatorServer]:
        return list(self._servers.values())

    def pool_urls(self) -> dict[str, list[str]]:
        return {name: list(urls) for name, (_, urls) in self._pools.items()}

    def pools(self) -> dict[str, Pool]:
        """The fleet as the gateway's model sees it."""
        return {
            name: build_pool(name, spec.model, spec.gpu, urls, self._servers[urls[0]].engine.max_model_len,
                             [kv.url if (kv := self._servers[url].kv_events) else None for url in urls],
                             spec.gpu_profile)
            for name, (spec, urls) in self._pools.items()
        }

    def specs(self) -> list[dict[str, Any]]:
        """Each pool with its resolved max_model_len, as the fleet state file records it."""
        return [
            {"name": name, "model": spec.model, "gpu": spec.gpu, "count": spec.count,
             "max_model_len": self._servers[urls[0]].engine.max_model_len,
             "kv_events": [kv.url if (kv := self._servers[url].kv_events) else None for url in urls],
             "gpu_profile": GpuProfileConfig.from_profile(spec.gpu_profile).model_dump() if spec.gpu_profile else None}
            for name, (spec, urls) in self._pools.items()
        ]

    async def _start(self, spec: EmulatedPoolSpec, host: str, options: dict[str, Any]) -> None:
        urls: list[str] = []
        self._pools[spec.name] = (spec, urls)
        for i in range(spec.count):
            kv_port = spec.kv_events_base_port + i if spec.kv_events_base_port else None
            server = EmulatorServer(spec.gpu_profile or spec.gpu, spec.model, max_model_len=spec.max_model_len, kv_events_port=kv_port,
                                    serves=spec.serves, max_loras=spec.max_loras, **options)
            url = await server.start(host, spec.base_port + i if spec.base_port else 0)
            self._servers[url] = server
            urls.append(url)

    async def stop(self) -> None:
        for server in self._servers.values():
            await server.stop()


@contextlib.asynccontextmanager
async def run_emulated_fleet(
    specs: Sequence[PoolSpecLike], *, time_scale: float = 1.0, host: str = "127.0.0.1", **server_options: Any
) -> AsyncIterator[EmulatedFleet]:
    """Start emulator servers in this event loop; `server_options` go to every EmulatorServer
    (kv_cache_tokens, default_max_tokens, enable_prefix_caching, ...)."""
    fleet = EmulatedFleet()
    try:
        for spec in specs:
            await fleet._start(as_spec(spec), host, {"time_scale": time_scale, **server_options})
        yield fleet
    finally:
        await fleet.stop()
