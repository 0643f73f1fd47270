"""Request heads past a size limit get 431 in OpenAI's error shape, at two places.

- `HeadLimit`, ASGI middleware: holds behind any server, Ray Serve's proxy included, which accepts
  heads of megabytes (the headers are copied into dicts, logs and the upstream request).
- `HeadLimitedHttpTools`, the bare server's HTTP protocol: uvicorn's httptools parser with the same
  limit applied while the head is parsed, so a connection cannot make it buffer megabytes first.
  h11, uvicorn's other parser, bounds only a head that arrives in pieces, and serves about a quarter
  fewer requests/s than httptools here (`fleetgate bench overhead`, 32 clients).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fleetgate.router.limits import HeadersTooLargeError, request_id


class HeadLimit:
    def __init__(self, app: ASGIApp, *, max_header_bytes: int) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > self.max_header_bytes:
                error = HeadersTooLargeError(f"request headers of {size} bytes exceed the "
                                             f"{self.max_header_bytes}-byte limit")
                response = JSONResponse(error.to_body(), status_code=error.status,
                                        headers={"x-request-id": request_id(None)})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class HeadLimitedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol that stops parsing once the request head passes
    `config.h11_max_incomplete_event_size` bytes and answers 431 (uvicorn's httptools has no limit)."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._head_limit: int = config.h11_max_incomplete_event_size
        self._head_bytes = 0

    def on_message_begin(self) -> None:
        self._head_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._head_limit:
            raise _HeadTooLarge  # the parser stops; uvicorn answers through send_400_response

    def send_400_response(self, msg: str) -> None:
        if self._head_bytes <= self._head_limit:
            super().send_400_response(msg)
            return
        error = HeadersTooLargeError(f"request head exceeds the {self._head_limit}-byte limit")
        body = orjson.dumps(error.to_body())
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                             b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
        self.transport.close()


class _HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops and reports a parse error."""
