"""`x-fleetgate-replica: <node id>/<replica id>` on every answer of a Ray Serve replica.

Where a request was served is otherwise invisible behind Serve's proxy; with it a client (and
the multi-node test) sees which node and replica answered. Ray's ids only, nothing of the request.
"""

from __future__ import annotations

from ray import serve
from ray.runtime_context import get_runtime_context
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REPLICA_HEADER = "x-fleetgate-replica"


def replica_name() -> str:
    """This replica's node id (first 12 hex digits, as `ray status` shortens it) and replica id."""
    return f"{get_runtime_context().get_node_id()[:12]}/{serve.get_replica_context().replica_id.unique_id}"


class ReplicaHeader:
    """ASGI middleware adding the replica header to every HTTP response start (`app.add_middleware(ReplicaHeader)`,
    so the app stays the Starlette app Serve adds its own exception handlers to)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._header = (REPLICA_HEADER.encode(), replica_name().encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self._header]}
            await send(message)

        await self._app(scope, receive, send_with_header)
