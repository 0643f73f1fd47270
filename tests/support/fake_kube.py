"""A small fake Kubernetes API server (aiohttp, loopback) serving EndpointSlices as the API server does.

- `GET /apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?labelSelector=...`: an
  EndpointSliceList whose `metadata.resourceVersion` is the store's current version.
- the same with `watch=true&resourceVersion=RV`: a chunked stream of one JSON event per line
  (`{"type": "ADDED"|"MODIFIED"|"DELETED", "object": EndpointSlice}`), first every change after RV
  still in the history, then each change as it happens; an RV older than the history answers an
  ERROR event with a 410 Status, as the API server does when a version has been compacted away.
- equality-based label selectors (`a=b,c=d`), which is what the gateway's pools use.

Tests change slices with `put` (ADDED or MODIFIED) and `delete`, end open watches with `drop_watches`
and compact the history with `forget_history`; `watches` and `gone` count watch requests and 410s.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from typing import Any

from aiohttp import web

PREFIX = "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"


def endpoint_slice(name: str, namespace: str, labels: dict[str, str], pods: dict[str, tuple[str, bool]],
                   port: int, port_name: str = "http") -> dict[str, Any]:
    """An EndpointSlice of `pods` (pod name -> (IP address, ready)) on one named port."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": ready, "serving": ready,
                                                                "terminating": not ready},
                       "targetRef": {"kind": "Pod", "name": pod, "namespace": namespace}}
                      for pod, (address, ready) in pods.items()],
    }


class FakeKubeApi:
    def __init__(self, history: int = 1000) -> None:
        self.version = 100
        self.slices: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[tuple[int, str, dict[str, Any]]] = []  # (version, type, object)
        self.history = history
        self.watches = 0
        self.gone = 0  # watches answered 410 Gone
        self._generation = 0
        self._changed = asyncio.Condition()

    async def put(self, item: dict[str, Any]) -> None:
        key = (item["metadata"]["namespace"], item["metadata"]["name"])
        kind = "MODIFIED" if key in self.slices else "ADDED"
        await self._record(kind, key, copy.deepcopy(item))

    async def delete(self, namespace: str, name: str) -> None:
        await self._record("DELETED", (namespace, name), self.slices[(namespace, name)])

    def drop_watches(self) -> None:
        """End every open watch stream (as an API server does on restart or timeout)."""
        self._generation += 1

    def forget_history(self) -> None:
        """Compact: every version before now is gone (a watch from one gets 410)."""
        self.events.clear()

    async def _record(self, kind: str, key: tuple[str, str], item: dict[str, Any]) -> None:
        self.version += 1
        item = {**item, "metadata": {**item["metadata"], "resourceVersion": str(self.version)}}
        if kind == "DELETED":
            del self.slices[key]
        else:
            self.slices[key] = item
        self.events = (self.events + [(self.version, kind, item)])[-self.history:]
        async with self._changed:
            self._changed.notify_all()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(PREFIX, self._endpoint_slices)
        return app

    async def _endpoint_slices(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["namespace"]
        selector = _selector(request.query.get("labelSelector", ""))

        def selected(item: dict[str, Any]) -> bool:
            labels = item["metadata"].get("labels", {})
            return item["metadata"]["namespace"] == namespace and all(labels.get(k) == v for k, v in selector.items())

        if request.query.get("watch", "").lower() not in ("1", "t", "true"):  # Go's ParseBool, as the API server
            items = [item for item in self.slices.values() if selected(item)]
            return web.json_response({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
                                      "metadata": {"resourceVersion": str(self.version)}, "items": items})
        self.watches += 1
        since = int(request.query.get("resourceVersion") or self.version)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        oldest = self.events[0][0] if self.events else self.version + 1
        if since + 1 < oldest and since < self.version:
            gone = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
                    "message": f"too old resource version: {since} ({oldest - 1})"}
            await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            self.gone += 1
            return response
        sent = since
        generation = self._generation
        while generation == self._generation:
            for version, kind, item in list(self.events):
                if version > sent:
                    sent = version
                    if selected(item):
                        await response.write(json.dumps({"type": kind, "object": item}).encode() + b"\n")
            if request.transport is None or request.transport.is_closing():
                return response  # the watcher went away
            async with self._changed:
                if not any(version > sent for version, _, _ in self.events):
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), 0.2)
        return response


def _selector(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split(",") if "=" in part)


def kubeconfig(server: str) -> str:
    """A kubeconfig naming `server` (plain HTTP on loopback, no credentials)."""
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        "users": [{"name": "fake", "user": {}}],
    })
