"""LoRA adapters: served by the pools of their base model, routed to instances that hold them, and
loaded by the gateway where none does (when the fleet allows it).

- What an adapter is: a name the fleet file lists under a pool's `lora_adapters`, or one an instance
  lists in `/v1/models` (pools/registry.py). Its base model picks the pools; the request keeps the
  adapter's name, which vLLM serves it under.
- Where it goes: the router decides as for any request; then an instance that holds the adapter (or is
  loading it for another request) goes first: one of the router's own choices (DualMap's two
  candidates) when one holds it, else the least loaded holder of the pool. Only when no instance
  holds it does the request stay where the router sent it, and the adapter is loaded there first.
- Loading: `POST /v1/load_lora_adapter {"lora_name", "lora_path"}` (vLLM's runtime loading). One load
  per (instance, adapter) at a time: concurrent requests that need it wait for the same one. An
  instance that refuses the adapter as unknown (it unloaded it: LRU over its --max-loras) is told
  again, once, then the request is re-sent there.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Mapping, Sequence

import aiohttp

from fleetgate.core.errors import GatewayError
from fleetgate.pools.model import Endpoint, FleetSnapshot
from fleetgate.pools.registry import FleetRegistry
from fleetgate.router.routing.base import InstanceView, RouteDecision


class AdapterUnavailableError(GatewayError):
    """The adapter is known but held by no healthy instance, and the gateway may not (or could not) load it."""

    status = 503
    error_type = "service_unavailable_error"
    code = "lora_adapter_unavailable"


def base_model(snapshot: FleetSnapshot, model: str) -> str | None:
    """The base model of adapter `model`; None when `model` is no adapter (a base model, or unknown).
    O(pools) for a base model; an instance's own adapter list is searched only for other names."""
    for pool in snapshot.pools.values():
        if model == pool.model:
            return None
        if model in pool.lora_adapters:
            return pool.model
    for pool in snapshot.pools.values():
        if any(model in snapshot.state(e).adapters for e in pool.endpoints):
            return pool.model
    return None


class LoraLoader:
    """Loads adapters on instances for one gateway process, once per (instance, adapter) at a time."""

    def __init__(self, registry: FleetRegistry, session: Callable[[], aiohttp.ClientSession],
                 auth: Callable[[str], Mapping[str, str]], *, timeout_s: float = 120.0) -> None:
        self._registry = registry
        self._session = session
        self._auth = auth
        self._timeout_s = timeout_s
        self._loading: dict[tuple[str, str], asyncio.Future[None]] = {}

    def holders(self, adapter: str, endpoints: Sequence[Endpoint]) -> set[str]:
        """Names of `endpoints` holding `adapter`, or loading it now."""
        snapshot = self._registry.snapshot
        return {e.name for e in endpoints if adapter in snapshot.state(e).adapters or (e.name, adapter) in self._loading}

    def prefer_holders(self, adapter: str, decision: RouteDecision, views: Sequence[InstanceView]) -> RouteDecision:
        """`decision` with an instance holding `adapter` first (see the module docstring)."""
        holders = self.holders(adapter, [v.endpoint for v in views])
        if not holders or decision.chosen.name in holders:
            return decision
        picked = next((e for e in decision.head if e.name in holders), None)
        reason = f"{decision.reason}+lora"
        if picked is None:
            picked = min((v for v in views if v.name in holders), key=lambda v: (v.load, v.name)).endpoint
            reason = "lora-holder"
        head = (picked, *(e for e in decision.head if e != picked))
        return RouteDecision(head, reason, tail=lambda: tuple(e for e in decision.ordered if e not in head))

    async def ready(self, endpoint: Endpoint, adapter: str, *, lost: bool = False) -> None:
        """Return once `endpoint` holds `adapter`, loading it there if needed. `lost`: the instance just
        refused it as unknown, whatever the registry last saw."""
        if lost:
            self._registry.note_adapter(endpoint, adapter, held=False)
        elif adapter in self._registry.snapshot.state(endpoint).adapters:
            return
        key = (endpoint.name, adapter)
        loading = self._loading.get(key)
        if loading is None:
            loading = self._loading[key] = asyncio.ensure_future(self._load(endpoint, adapter))
            loading.add_done_callback(lambda _: self._loading.pop(key, None))
        await asyncio.shield(loading)

    async def _load(self, endpoint: Endpoint, adapter: str) -> None:
        pool = self._registry.snapshot.pools[endpoint.pool]
        path = pool.lora_adapters.get(adapter)
        if not pool.runtime_lora_loading or path is None:
            raise AdapterUnavailableError(f"LoRA adapter {adapter!r} is loaded on no healthy instance of pool "
                                          f"{pool.name!r}, and the fleet does not let the gateway load it")
        try:
            async with self._session().post(
                    endpoint.url + "/v1/load_lora_adapter", json={"lora_name": adapter, "lora_path": path},
                    headers=self._auth(endpoint.pool), timeout=aiohttp.ClientTimeout(total=self._timeout_s)) as response:
                text = await response.text()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            raise AdapterUnavailableError(f"loading LoRA adapter {adapter!r} on {endpoint.name} failed: "
                                          f"{error.__class__.__name__}") from None
        if response.status != 200 and "already been loaded" not in text:
            raise AdapterUnavailableError(f"{endpoint.name} refused to load LoRA adapter {adapter!r} "
                                          f"(HTTP {response.status})")
        self._registry.note_adapter(endpoint, adapter, held=True)
