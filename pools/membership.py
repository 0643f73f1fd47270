"""Live fleet membership: which instances each pool has, changed without a restart.

Three sources change it, and all of them go through `FleetMembership`, which rebuilds the pools and
hands them to the registry (`FleetRegistry.set_pools`):
- the fleet file, when it changes (`FleetFileWatcher`): the file is then the whole fleet again,
  so instances added through the admin API and not in the file go;
- the admin API (`add_instance`, `remove_instance`: POST/DELETE /admin/instances);
- Kubernetes discovery (pools/k8s.py) for pools with `kubernetes:`, which sets those pools'
  instances from their EndpointSlices (`set_discovered`).

A removed instance only leaves the routing picture: requests already sent to it keep their
connection and finish. Ring positions follow instance names, so a scale event moves about 2/N of
DualMap's keys when names are stable: an instance added live is named `<pool>-<k>` with the
smallest k not in use, and the fleet file's instances keep their `name:` (or index) when others
come and go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol

from pydantic import ValidationError

from fleetgate.core.clock import Clock, monotonic_clock
from fleetgate.core.errors import GatewayError, InvalidRequestError
from fleetgate.core.filewatch import ChangedFile
from fleetgate.core.yamlconf import ConfigError
from fleetgate.pools.config import FleetConfig, InstanceConfig, KubernetesSource, PoolConfig, load_fleet
from fleetgate.pools.model import Endpoint, Pool
from fleetgate.pools.registry import FleetRegistry

log = logging.getLogger("fleetgate.pools")

FleetListener = Callable[[Mapping[str, Pool]], None]
"""Told the new pools after every change (e.g. the planner, for pools that came or went)."""


class MemberNotFoundError(GatewayError):
    """The admin API named a pool or an instance the fleet does not have."""

    status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class Discovery(Protocol):
    """Follows one pool's instances somewhere (Kubernetes) until cancelled, reporting each change."""

    async def run(self) -> None: ...


DiscoveryFactory = Callable[[str, KubernetesSource, Callable[[list[tuple[str, str]]], None]], Discovery]
"""(pool name, where to look, report (name, url) pairs) -> a discovery to run."""


class FleetMembership:
    """The fleet's current layout, and every way to change it (see the module docstring)."""

    def __init__(self, config: FleetConfig, registry: FleetRegistry, *,
                 discovery: DiscoveryFactory | None = None, environ: Mapping[str, str] = os.environ) -> None:
        self.registry = registry
        self._config = config
        self._discovery = discovery
        self._environ = environ
        self._listeners: list[FleetListener] = []
        self._discovered: dict[str, tuple[Endpoint, ...]] = {}
        self._watches: dict[str, tuple[KubernetesSource, asyncio.Task[None]]] = {}

    @property
    def pools(self) -> Mapping[str, Pool]:
        return self.registry.snapshot.pools

    def on_change(self, listener: FleetListener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        """Start following the Kubernetes pools (call from the event loop that serves requests)."""
        self._sync_watches()

    async def stop(self) -> None:
        for _, task in self._watches.values():
            task.cancel()
        for _, task in self._watches.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watches.clear()

    def apply_config(self, config: FleetConfig) -> None:
        """Make `config` the fleet (a changed fleet file); ValueError leaves the current one serving."""
        pools = self._build(config, self._discovered)
        self._publish(pools)
        self._config = config
        self._discovered = {name: eps for name, eps in self._discovered.items() if name in pools}
        self._sync_watches()

    def add_instance(self, pool_name: str, url: str) -> Endpoint:
        """Add `url` to `pool_name` now (the admin API); the new endpoint."""
        pool_config, pool = self._pool(pool_name)
        url = _checked_url(url)
        owner = next((p.name for p in self.pools.values() for e in p.endpoints if e.url == url), None)
        if owner is not None:
            raise InvalidRequestError(f"{url} is already an instance of pool {owner!r}", param="url")
        taken = {e.name for p in self.pools.values() for e in p.endpoints}
        name = next(f"{pool_name}-{k}" for k in range(len(taken) + 1) if f"{pool_name}-{k}" not in taken)
        endpoint = pool_config.endpoint(url, name, self._config.profiles())
        self._publish({**self.pools, pool_name: pool_config.with_endpoints(pool.endpoints + (endpoint,))})
        log.warning("instance %s (%s) added to pool %s", name, url, pool_name)
        return endpoint

    def remove_instance(self, pool_name: str, url: str) -> Endpoint:
        """Take `url` out of `pool_name` now (the admin API); requests already on it finish."""
        pool_config, pool = self._pool(pool_name)
        url = _checked_url(url)
        removed = next((e for e in pool.endpoints if e.url == url), None)
        if removed is None:
            raise MemberNotFoundError(f"pool {pool_name!r} has no instance {url}", param="url")
        self._publish({**self.pools, pool_name: pool_config.with_endpoints(
            tuple(e for e in pool.endpoints if e is not removed))})
        log.warning("instance %s (%s) removed from pool %s", removed.name, url, pool_name)
        return removed

    def set_discovered(self, pool_name: str, members: Iterable[tuple[str, str]]) -> None:
        """A Kubernetes pool's ready instances are now `members` ((name, url) pairs)."""
        pool_config = next((p for p in self._config.pools if p.name == pool_name), None)
        if pool_config is None:
            return  # the pool left the fleet file while its watch was reporting
        custom = self._config.profiles()
        endpoints = tuple(pool_config.endpoint(url, name, custom) for name, url in sorted(members))
        if endpoints == self._discovered.get(pool_name, ()) and pool_name in self.pools:
            return
        self._discovered[pool_name] = endpoints
        self._publish({**self.pools, pool_name: pool_config.with_endpoints(endpoints)})
        log.warning("pool %s now has %d instance(s) from Kubernetes", pool_name, len(endpoints))

    def _pool(self, name: str) -> tuple[PoolConfig, Pool]:
        pool_config = next((p for p in self._config.pools if p.name == name), None)
        if pool_config is None or name not in self.pools:
            known = ", ".join(sorted(self.pools)) or "none"
            raise MemberNotFoundError(f"no pool {name!r}; pools: {known}", param="pool")
        if pool_config.kubernetes is not None:
            raise InvalidRequestError(f"pool {name!r} takes its instances from Kubernetes; change them there",
                                      param="pool")
        return pool_config, self.pools[name]

    def _build(self, config: FleetConfig, discovered: Mapping[str, tuple[Endpoint, ...]]) -> dict[str, Pool]:
        pools = config.to_pools()
        for pool_config in config.pools:
            if pool_config.kubernetes is not None:
                pools[pool_config.name] = pool_config.with_endpoints(discovered.get(pool_config.name, ()))
        return pools

    def _publish(self, pools: Mapping[str, Pool]) -> None:
        for pool in pools.values():
            pool.upstream_authorization(self._environ)  # ValueError: its key's variable is not set
        self.registry.set_pools(pools)
        for listener in self._listeners:
            listener(pools)

    def _sync_watches(self) -> None:
        """One discovery task per Kubernetes pool; restarted when its source changes."""
        wanted = {p.name: p.kubernetes for p in self._config.pools if p.kubernetes is not None}
        for name, (source, task) in list(self._watches.items()):
            if wanted.get(name) != source:
                task.cancel()
                del self._watches[name]
        if self._discovery is None:
            return
        for name, source in wanted.items():
            if name not in self._watches:
                report = _reporter(self, name)
                discovery = self._discovery(name, source, report)
                self._watches[name] = (source, asyncio.create_task(discovery.run(), name=f"discover-{name}"))


def _reporter(membership: FleetMembership, pool_name: str) -> Callable[[list[tuple[str, str]]], None]:
    return lambda members: membership.set_discovered(pool_name, members)


def _checked_url(url: object) -> str:
    if not isinstance(url, str):
        raise InvalidRequestError("`url` must be a string such as http://10.0.0.7:8000", param="url")
    try:
        return InstanceConfig(url=url).url
    except ValidationError:
        raise InvalidRequestError(f"`url` must start with http:// or https://, not {url[:100]!r}",
                                  param="url") from None


class FleetFileWatcher:
    """Applies the fleet file when it changes; a file that does not load keeps the fleet in effect."""

    def __init__(self, membership: FleetMembership, path: str | Path, *, interval_s: float,
                 clock: Clock = monotonic_clock) -> None:
        self.membership = membership
        self._file = ChangedFile(path, interval_s=interval_s, clock=clock)
        self.reloads = 0
        self.rejected = 0

    def poll(self) -> bool | None:
        """Reload when the file changed: True applied, False rejected, None unchanged."""
        if not self._file.changed():
            return None
        self._file.read()
        try:
            self.membership.apply_config(load_fleet(self._file.path))
        except (ConfigError, ValueError) as error:
            self.rejected += 1
            log.error("fleet file %s rejected, current fleet kept: %s", self._file.path, error)
            return False
        self.reloads += 1
        log.warning("fleet file %s reloaded", self._file.path)
        return True


async def watch_fleet_file(watcher: FleetFileWatcher, poll_s: float) -> None:
    """Poll `watcher` forever (cancel to stop)."""
    while True:
        await asyncio.sleep(poll_s)
        watcher.poll()
