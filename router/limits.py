"""Bounds on what a client may send, checked before any other code looks at it.

orjson parses up to 1024 levels of nesting but dumps at most 255, and the prompt renderers
(core/prefix.py, core/tokens.py) dump tools, tool calls and content parts: a body nested deeper
than `MAX_JSON_DEPTH` is refused here with a 400 naming its field, instead of failing later as a
500. A client's `x-request-id` is reflected in headers and logs and forwarded upstream, so only a
short token of safe characters is kept; anything else is replaced with a fresh id.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from fleetgate.core.errors import GatewayError, InvalidRequestError

MAX_JSON_DEPTH = 64
"""Levels of arrays and objects a request body may nest (OpenAI's own bodies need under 20)."""

MAX_REQUEST_ID_CHARS = 128
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,%d}" % MAX_REQUEST_ID_CHARS)


class RequestTimeoutError(GatewayError):
    """The client sent its body too slowly (a slowloris holds a worker otherwise)."""

    status = 408
    error_type = "invalid_request_error"
    code = "request_timeout"


class HeadersTooLargeError(GatewayError):
    """Request headers past the limit: refused before anything reads them."""

    status = 431
    error_type = "invalid_request_error"
    code = "request_header_fields_too_large"


class ClientGoneError(GatewayError):
    """The client closed the connection before its body arrived: nobody is left to answer."""

    status = 499
    error_type = "invalid_request_error"
    code = "client_disconnected"


def check_depth(body: dict[str, Any], max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise a 400 naming the top-level field under which `body` nests deeper than `max_depth`."""
    for field, value in body.items():
        stack: list[tuple[Any, int]] = [(value, 2)]
        while stack:
            node, depth = stack.pop()
            if not isinstance(node, (dict, list)):
                continue
            if depth > max_depth:
                raise InvalidRequestError(f"'{field}' nests deeper than {max_depth} levels", param=field)
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))


def request_id(header: str | None) -> str:
    """The client's request id when it is a short token of safe characters; else a fresh one."""
    if header is not None and _REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex
