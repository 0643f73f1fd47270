"""Kubernetes discovery: a pool's instances are the ready endpoints of its EndpointSlices.

For a pool with `kubernetes: {namespace, selector, port}` (pools/config.py), `EndpointSliceDiscovery`
lists the EndpointSlices of `namespace` matching `selector`, reports their ready endpoints, then
watches from the list's resourceVersion and reports again after every ADDED, MODIFIED or DELETED
slice; when the watch's resourceVersion has expired (410 Gone) it lists again, and any other failure
is retried after `retry_s`. An endpoint counts while its `ready` condition is true or unknown (the
API's advice); a terminating Pod's is false. Its instance is named after the Pod (`targetRef`), so
every gateway replica names it alike and the hash rings agree.

Where the API is: in a Pod, the in-cluster service account; elsewhere the kubeconfig (`KUBECONFIG`
or ~/.kube/config). The gateway needs `list` and `watch` on `endpointslices.discovery.k8s.io`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any, AsyncIterator, Callable

from fleetgate.pools.config import KubernetesSource

log = logging.getLogger("fleetgate.pools")

Members = list[tuple[str, str]]
"""(instance name, base URL) of every ready endpoint."""


class EndpointSliceDiscovery:
    """Follows one pool's EndpointSlices until cancelled (see the module docstring)."""

    def __init__(self, pool: str, source: KubernetesSource, report: Callable[[Members], None], *,
                 retry_s: float = 2.0) -> None:
        self.pool = pool
        self.source = source
        self._report = report
        self._retry_s = retry_s
        self._slices: dict[str, Any] = {}

    async def run(self) -> None:
        while True:
            try:
                async with _api_client() as client:
                    await self._follow(client)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - the API may be away for a while: keep the last members
                log.warning("pool %s: Kubernetes discovery failed (%s); retrying in %.0f s", self.pool,
                            type(error).__name__, self._retry_s)
                await asyncio.sleep(self._retry_s)

    async def _follow(self, client: Any) -> None:
        """List, then watch from the list's version; list again when that version is gone (410)."""
        from kubernetes_asyncio.client import ApiException, DiscoveryV1Api
        from kubernetes_asyncio.watch import Watch

        api = DiscoveryV1Api(client)
        source = self.source
        while True:
            listed = await api.list_namespaced_endpoint_slice(source.namespace, label_selector=source.selector)
            self._slices = {item.metadata.name: item for item in listed.items}
            self._report(self.members())
            try:
                async with Watch() as watch:
                    async for event in watch.stream(api.list_namespaced_endpoint_slice, source.namespace,
                                                    label_selector=source.selector,
                                                    resource_version=listed.metadata.resource_version):
                        self._apply(event["type"], event["object"])
            except ApiException as error:
                if error.status != 410:
                    raise
                log.info("pool %s: EndpointSlice watch expired; listing again", self.pool)

    def _apply(self, kind: str, item: Any) -> None:
        if kind in ("ADDED", "MODIFIED"):
            self._slices[item.metadata.name] = item
        elif kind == "DELETED":
            self._slices.pop(item.metadata.name, None)
        else:
            return
        self._report(self.members())

    def members(self) -> Members:
        """The ready endpoints of every slice, as (name, URL), sorted."""
        found: dict[str, str] = {}
        for item in self._slices.values():
            port = _port(item.ports or [], self.source.port)
            if port is None:
                continue
            for endpoint in item.endpoints or []:
                ready = endpoint.conditions.ready if endpoint.conditions is not None else None
                if ready is False or not endpoint.addresses:
                    continue
                address = endpoint.addresses[0]
                host = f"[{address}]" if ":" in address else address
                target = endpoint.target_ref.name if endpoint.target_ref is not None else None
                found[f"{self.pool}-{target or address}"] = f"{self.source.scheme}://{host}:{port}"
        return sorted(found.items())


def _port(ports: list[Any], wanted: str | int | None) -> int | None:
    for port in ports:
        if wanted is None or port.name == wanted or str(port.port) == str(wanted):
            return port.port
    return None


@contextlib.asynccontextmanager
async def _api_client() -> AsyncIterator[Any]:
    """An API client for the cluster this process runs in, else the kubeconfig's."""
    from kubernetes_asyncio import client, config

    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        await config.load_kube_config(client_configuration=configuration, persist_config=False)
    async with client.ApiClient(configuration) as api_client:
        yield api_client
