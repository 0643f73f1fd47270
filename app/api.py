"""The OpenAI-compatible HTTP surface of the gateway, as a plain ASGI (Starlette) app.

No Ray import: `serve.py` wraps this app in a Ray Serve deployment, and tests and the overhead
benchmark also run it bare under uvicorn. Every error leaves through `_error_response`, in
OpenAI's shape, with the request id; nothing else ever produces a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any, AsyncGenerator, AsyncIterator, Awaitable, Callable, Protocol

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.middleware import Middleware
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from fleetgate.app.admin_access import AdminAccess
from fleetgate.app.head_limit import HeadLimit
from fleetgate.app.logs import current_request_id
from fleetgate.app.openapi import openapi_document
from fleetgate.app.drain import CountInFlight, Drain
from fleetgate.core.errors import (
    GatewayError,
    InvalidRequestError,
    PayloadTooLargeError,
    internal_error_body,
)
from fleetgate.core.request import ApiKind
from fleetgate.pools.membership import FleetMembership
from fleetgate.pools.model import FleetSnapshot
from fleetgate.router.anthropic import error_body as anthropic_error_body
from fleetgate.router.anthropic import with_bearer
from fleetgate.router.frontdoor import FrontDoor
from fleetgate.router.gateway import Gateway, GatewayResponse
from fleetgate.router.ingress import parse_inference_request
from fleetgate.router.limits import ClientGoneError, RequestTimeoutError
from fleetgate.router.limits import request_id as sanitised_request_id

log = logging.getLogger("fleetgate.api")


class GatewayRuntime(Protocol):
    """What the app needs from the composition root: a started gateway and its lifecycle."""

    gateway: Gateway
    front_door: FrontDoor
    admin_token: str | None
    max_body_bytes: int
    max_header_bytes: int
    body_read_timeout_s: float
    send_timeout_s: float
    membership: FleetMembership
    drain: Drain

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def explain(self, raw_body: bytes, api: ApiKind, headers: dict[str, str]) -> dict[str, Any]: ...

    async def reload_policy(self) -> list[str]: ...


def _error_response(error: GatewayError, request_id: str, api: str = "openai") -> JSONResponse:
    """`api` "messages": in Anthropic's error shape, as its clients parse errors."""
    return JSONResponse(anthropic_error_body(error) if api == "messages" else error.to_body(), status_code=error.status,
                        headers={"x-request-id": request_id, **error.headers()})


async def _read_body(request: Request, limit_bytes: int, timeout_s: float) -> bytes:
    """The whole body, refusing early (413) once it passes the limit instead of buffering it, and
    (408) once it takes longer than `timeout_s`, so a client sending a byte a second frees its worker.
    A client that closes mid-upload is a ClientGoneError: counted, not logged as a bug."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise PayloadTooLargeError(f"request body of {declared} bytes exceeds the {limit_bytes}-byte limit")
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit_bytes:
                    raise PayloadTooLargeError(f"request body exceeds the {limit_bytes}-byte limit")
                parts.append(chunk)
    except TimeoutError:
        raise RequestTimeoutError(f"request body not received within {timeout_s:g} s") from None
    except ClientDisconnect:
        raise ClientGoneError("client disconnected while sending the request body") from None
    return b"".join(parts)


async def _until_disconnect(request: Request) -> None:
    """Return when the client closes the connection (the body has already been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that closes its body generator however the response ends. Starlette does
    not: a stream cut while it awaits `send` (the client left) leaves the generator suspended until
    the garbage collector finalises it, and the gateway's relay holds the upstream request open
    until then, so vLLM went on generating for a client that was gone."""

    body_iterator: AsyncGenerator[bytes, None]

    def __init__(self, *args: Any, send_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.send_timeout_s = send_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def bounded_send(message: Any) -> None:
            """A client that stops reading fills the socket buffers and `send` waits on them: past the
            timeout the response ends, and with it the relay and the upstream request."""
            try:
                await asyncio.wait_for(send(message), self.send_timeout_s)
            except TimeoutError:
                log.warning("client took no data for %g s; ending its stream", self.send_timeout_s)
                raise OSError("client stopped reading") from None

        try:
            await super().__call__(scope, receive, bounded_send)
        except (OSError, ClientDisconnect):
            pass  # the client is gone or stalled: nobody to tell
        finally:
            await self.body_iterator.aclose()


def _to_http(response: GatewayResponse, send_timeout_s: float) -> Response:
    if response.stream is not None:
        return _ClosingStreamingResponse(response.stream, status_code=response.status, headers=response.headers,
                                         media_type=response.content_type, send_timeout_s=send_timeout_s)
    return Response(response.body, status_code=response.status, headers=response.headers,
                    media_type=response.content_type)


def create_app(runtime: GatewayRuntime, *, client_address_known: bool = True) -> Starlette:
    """Build the ASGI app around a runtime that `start()`s with the app and `stop()`s with it.
    `client_address_known`: whether a request's peer address is the real client's (app/admin_access.py)."""
    gateway_models_created = int(time.time())
    admin = AdminAccess(runtime.admin_token, client_address_known=client_address_known)

    def admin_only(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            try:
                admin.check({k.lower(): v for k, v in request.headers.items()},
                            request.client.host if request.client else None)
            except GatewayError as error:
                return _error_response(error, uuid.uuid4().hex)
            return await handler(request)

        return guarded

    def inference(api: ApiKind) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            request_id = sanitised_request_id(request.headers.get("x-request-id"))
            current_request_id.set(request_id)  # on every log record of this request (app/logs.py)
            try:
                headers = with_bearer({k.lower(): v for k, v in request.headers.items()})
                key = runtime.front_door.identify(headers)  # 401 before reading the body
                raw = await _read_body(request, runtime.max_body_bytes, runtime.body_read_timeout_s)
                parsed = parse_inference_request(raw, api, request_id=request_id,
                                                 arrival_s=runtime.gateway.clock(), headers=headers, key=key)
                await runtime.front_door.admit(parsed, key)
                return _to_http(await _unless_disconnected(request, runtime.gateway.handle(parsed, raw, headers)),
                                runtime.send_timeout_s)
            except GatewayError as error:
                runtime.gateway.metrics.rejected.labels(error.code or error.error_type).inc()
                runtime.gateway.telemetry.refused(request_id, error.status, error.code or error.error_type)
                return _error_response(error, request_id, api)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bug must not leak a traceback to the client
                log.exception("unexpected error serving %s", request_id)
                runtime.gateway.metrics.internal_errors.inc()
                body = internal_error_body()
                if api == "messages":
                    body = anthropic_error_body(GatewayError(body["error"]["message"]))
                return JSONResponse(body, status_code=500, headers={"x-request-id": request_id})

        return endpoint

    async def models(request: Request) -> Response:
        served = runtime.gateway.registry.snapshot.models()
        try:
            key = runtime.front_door.identify({k.lower(): v for k, v in request.headers.items()})
        except GatewayError as error:
            return _error_response(error, uuid.uuid4().hex)
        data = [{"id": model, "object": "model", "created": gateway_models_created, "owned_by": "fleetgate"}
                for model in served if key is None or key.allows(model)]
        return JSONResponse({"object": "list", "data": data})

    async def ready(_request: Request) -> Response:
        """Whether to send this process requests (a load balancer's or Kubernetes' readiness probe),
        unlike /health (whether it runs): 503 while it drains or while a model it serves has no
        healthy instance."""
        if runtime.drain.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        unserved = _models_without_healthy_instance(runtime.gateway.registry.snapshot)
        if unserved:
            return JSONResponse({"status": "unavailable", "models_without_healthy_instance": unserved},
                                status_code=503)
        return JSONResponse({"status": "ready"})

    async def instances(request: Request) -> Response:
        """POST adds, DELETE removes the instance {"pool": NAME, "url": URL} (pools/membership.py)."""
        try:
            body = orjson.loads(await _read_body(request, runtime.max_body_bytes, runtime.body_read_timeout_s))
        except orjson.JSONDecodeError:
            return _error_response(InvalidRequestError("the body must be JSON: {\"pool\": NAME, \"url\": URL}"),
                                   uuid.uuid4().hex)
        try:
            if not isinstance(body, dict) or not isinstance(body.get("pool"), str):
                raise InvalidRequestError("the body must be {\"pool\": NAME, \"url\": URL}", param="pool")
            change = runtime.membership.add_instance if request.method == "POST" else runtime.membership.remove_instance
            endpoint = change(body["pool"], body.get("url"))
        except GatewayError as error:
            return _error_response(error, uuid.uuid4().hex)
        except ValueError as error:  # e.g. the pool's key variable is unset
            return _error_response(InvalidRequestError(str(error)), uuid.uuid4().hex)
        pool = runtime.gateway.registry.snapshot.pools[endpoint.pool]
        return JSONResponse({"pool": pool.name, "instance": {"name": endpoint.name, "url": endpoint.url},
                             "instances": [{"name": e.name, "url": e.url} for e in pool.endpoints]},
                            status_code=201 if request.method == "POST" else 200)

    async def health(_request: Request) -> Response:
        snapshot = runtime.gateway.registry.snapshot
        total = sum(len(pool.endpoints) for pool in snapshot.pools.values())
        healthy = sum(len(snapshot.healthy(name)) for name in snapshot.pools)
        return JSONResponse({"status": "ok", "healthy_instances": healthy, "instances": total})

    async def openapi(_request: Request) -> Response:
        return JSONResponse(openapi_document(sorted(runtime.gateway.registry.snapshot.models())))

    async def metrics(_request: Request) -> Response:
        runtime.gateway.metrics.asyncio_tasks.set(len(asyncio.all_tasks()))  # counted here: requests pay nothing
        return Response(generate_latest(runtime.gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def fleet(_request: Request) -> Response:
        snapshot = runtime.gateway.registry.snapshot
        pools = {
            name: [{"name": e.name, "url": e.url, "gpu": e.gpu, **_state_dict(snapshot.state(e))}
                   for e in pool.endpoints]
            for name, pool in snapshot.pools.items()
        }
        return JSONResponse({"version": snapshot.version, "pools": pools})

    async def explain(request: Request) -> Response:
        request_id = uuid.uuid4().hex
        try:
            raw = await _read_body(request, runtime.max_body_bytes, runtime.body_read_timeout_s)
            api: ApiKind = "completions" if request.query_params.get("api") == "completions" else "chat"
            headers = {k.lower(): v for k, v in request.headers.items()}
            return Response(orjson.dumps(await runtime.explain(raw, api, headers)), media_type="application/json")
        except GatewayError as error:
            return _error_response(error, request_id)
        except Exception:  # noqa: BLE001 - a bug must not leak a traceback (or Starlette's plain text)
            log.exception("unexpected error explaining %s", request_id)
            runtime.gateway.metrics.internal_errors.inc()
            return JSONResponse(internal_error_body(), status_code=500, headers={"x-request-id": request_id})

    async def cache_feedback(request: Request) -> Response:
        request_id = sanitised_request_id(request.headers.get("x-request-id"))
        try:
            headers = {k.lower(): v for k, v in request.headers.items()}
            key = runtime.front_door.identify(headers)
            raw = await _read_body(request, runtime.max_body_bytes, runtime.body_read_timeout_s)
            await runtime.gateway.cache_feedback(raw, headers, key.tenant if key is not None else None)
        except GatewayError as error:
            return _error_response(error, request_id)
        return JSONResponse({"dropped": True}, headers={"x-request-id": request_id})

    async def reload_policy(_request: Request) -> Response:
        try:
            problems = await runtime.reload_policy()
        except GatewayError as error:
            return _error_response(error, uuid.uuid4().hex)
        return JSONResponse({"reloaded": not problems, "errors": problems}, status_code=200 if not problems else 422)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", inference("chat"), methods=["POST"]),
            Route("/v1/completions", inference("completions"), methods=["POST"]),
            Route("/v1/messages", inference("messages"), methods=["POST"]),
            Route("/v1/responses", inference("responses"), methods=["POST"]),
            Route("/v1/embeddings", inference("embeddings"), methods=["POST"]),
            Route("/tokenize", inference("tokenize"), methods=["POST"]),
            Route("/detokenize", inference("detokenize"), methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/cache/feedback", cache_feedback, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/ready", ready, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/admin/fleet", admin_only(fleet), methods=["GET"]),
            Route("/admin/explain", admin_only(explain), methods=["POST"]),
            Route("/admin/policy/reload", admin_only(reload_policy), methods=["POST"]),
            Route("/admin/instances", admin_only(instances), methods=["POST", "DELETE"]),
        ],
        lifespan=lifespan,
        middleware=[Middleware(HeadLimit, max_header_bytes=runtime.max_header_bytes),
                    Middleware(CountInFlight, drain=runtime.drain)],
    )
    app.state.drain = runtime.drain  # for the server in front (app/drain.py DrainingServer)
    return app


async def _unless_disconnected(request: Request, work: Awaitable[GatewayResponse]) -> GatewayResponse:
    """Run a request up to its response (a stream: up to its first byte), cancelling it if the client
    leaves: a waiter in the admission queue leaves the queue, and an upstream call is cancelled. After
    that a stream's own disconnect handling (StreamingResponse) closes the relay."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise InvalidRequestError("client disconnected")
    return task.result()


def _models_without_healthy_instance(snapshot: FleetSnapshot) -> list[str]:
    healthy = {pool.model for name, pool in snapshot.pools.items() if snapshot.healthy(name)}
    return [model for model in snapshot.models() if model not in healthy]


def _state_dict(state: Any) -> dict[str, Any]:
    """An EndpointState as JSON values (its LoRA adapters: a sorted list)."""
    return {field: sorted(value) if isinstance(value := getattr(state, field), frozenset) else value
            for field in state.__slots__}
