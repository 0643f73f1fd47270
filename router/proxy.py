"""The upstream side: one pooled aiohttp session per process, bytes passed through unparsed.

`open()` sends the client's body unchanged and returns only once the first chunk of the answer
has arrived, so the caller can still try another instance when this one refuses, fails with a
5xx or hangs; after that, `chunks()` relays the rest as it comes. Timeouts are ours and per phase
(connect, first byte, idle between chunks); there is deliberately no end-to-end cap, which would
cut long streams. Closing an `UpstreamResponse` closes its connection, which is how vLLM learns
that the client went away and aborts the generation. A failed `open()` says what kind of failure it
was and whether the instance may have acted on the body (the gateway's retry rules need both), and a
429/503 with Retry-After says how long the instance asked to be left alone.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import AsyncIterator, Mapping, Sequence

import aiohttp

from fleetgate.core.errors import UpstreamError, UpstreamTimeoutError

REFUSED, TIMEOUT, STATUS_5XX, BROKEN, BUSY = "refused", "timeout", "5xx", "broken", "busy"
_BUSY_STATUSES = (429, 503)


class UpstreamAttemptError(UpstreamError):
    """One attempt failed before its first byte. `kind`: refused (no connection), timeout (connect or first
    byte: we closed it, which aborts the work), 5xx (an answer: vLLM refuses before doing any work), broken
    (the connection broke after the body was written: the instance may have acted on it), busy (429/503 with
    Retry-After: `retry_after_s`, passed to the client as is when no other instance can take the request)."""

    def __init__(self, message: str, kind: str, *, status: int = 502, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.may_have_acted = kind == BROKEN
        self.status = status
        self.retry_after_s = retry_after_s
        if kind == TIMEOUT:
            self.code = UpstreamTimeoutError.code
        elif kind == BUSY:
            self.error_type, self.code = "service_unavailable_error", "upstream_busy"

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


def retry_after_s(value: str | None) -> float | None:
    """Retry-After in seconds (RFC 9110: delay-seconds; an HTTP date is not honoured), None when absent or bad."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 3600 and math.isfinite(seconds) else None


@dataclass(frozen=True, slots=True)
class ProxyTimeouts:
    """Per-phase limits, all stated by the caller: their defaults live with the gateway settings."""

    connect_s: float
    first_byte_s: float  # streaming: queueing + prefill of one request
    nonstream_response_s: float  # non-streaming: the whole generation is the first byte
    idle_s: float  # between two chunks of a stream


class UpstreamResponse:
    """An upstream answer whose status, headers and first chunk are known."""

    def __init__(self, response: aiohttp.ClientResponse, first_chunk: bytes, idle_s: float) -> None:
        self._response = response
        self.status = response.status
        self.content_type = response.headers.get("Content-Type", "application/json")
        self.first_chunk = first_chunk
        self._idle_s = idle_s

    async def chunks(self) -> AsyncIterator[bytes]:
        """The first chunk, then each further chunk as it arrives; raises UpstreamError when the
        instance breaks the stream or stays silent longer than the idle timeout."""
        yield self.first_chunk
        content = self._response.content
        while True:
            try:
                async with asyncio.timeout(self._idle_s):
                    chunk = await content.readany()
            except TimeoutError:
                raise UpstreamTimeoutError(f"upstream silent for {self._idle_s:.0f}s mid-response") from None
            except (aiohttp.ClientError, OSError) as error:
                raise UpstreamError(f"upstream broke the response: {error.__class__.__name__}") from None
            if not chunk:
                return
            yield chunk

    async def read_all(self) -> bytes:
        parts = [chunk async for chunk in self.chunks()]
        return b"".join(parts)

    def close(self) -> None:
        """Release the connection; if the body is unfinished the connection is dropped, not reused."""
        self._response.close()


class UpstreamClient:
    """The pooled HTTP clients for every instance this process talks to: `session` for requests, at
    most `connections_per_instance` open to one instance (more wait for one), and `probe_session`
    for health probes and scrapes, which must not queue behind the streams they judge."""

    def __init__(self, timeouts: ProxyTimeouts, *, connections_per_instance: int,
                 trace_configs: Sequence[aiohttp.TraceConfig] = ()) -> None:
        """`trace_configs`: hooks on the request session only (tracing), never on the probes."""
        self.timeouts = timeouts
        self.connections_per_instance = connections_per_instance
        self._trace_configs = list(trace_configs)
        self._session: aiohttp.ClientSession | None = None
        self._probe_session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() was not awaited")
        return self._session

    @property
    def probe_session(self) -> aiohttp.ClientSession:
        if self._probe_session is None:
            raise RuntimeError("UpstreamClient.start() was not awaited")
        return self._probe_session

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=self.connections_per_instance,
                                         keepalive_timeout=30, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect_s),
            auto_decompress=False,
            trace_configs=self._trace_configs or None,
        )
        self._probe_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def close(self) -> None:
        for session in (self._session, self._probe_session):
            if session is not None:
                await session.close()
        self._session = self._probe_session = None

    async def open(self, url: str, body: bytes, headers: Mapping[str, str], *, stream: bool) -> UpstreamResponse:
        """POST `body` to `url` and wait for the first chunk. Raises `UpstreamAttemptError` when the
        instance is unreachable, answers 5xx or 429/503 with Retry-After, breaks the connection, or sends
        nothing in time; any other 4xx answer is returned like a success, since another instance would
        refuse the same request."""
        limit_s = self.timeouts.first_byte_s if stream else self.timeouts.nonstream_response_s
        response: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(limit_s):
                response = await self.session.post(url, data=body, headers=headers)
                first_chunk = await response.content.readany()
        except TimeoutError:  # ours, or aiohttp's connect timeout (a TimeoutError too)
            if response is not None:
                response.close()
            raise UpstreamAttemptError(f"no answer from the instance within {limit_s:.0f}s", TIMEOUT, status=504) from None
        except aiohttp.ClientConnectorError as error:
            raise UpstreamAttemptError(f"instance unreachable: {error.__class__.__name__}", REFUSED) from None
        except (aiohttp.ClientError, OSError) as error:
            if response is not None:
                response.close()
            raise UpstreamAttemptError(f"instance broke the connection: {error.__class__.__name__}", BROKEN) from None
        except BaseException:  # cancelled (client gone, or the request is re-sent elsewhere)
            if response is not None:
                response.close()
            raise
        wait_s = retry_after_s(response.headers.get("Retry-After")) if response.status in _BUSY_STATUSES else None
        if wait_s is not None:
            response.close()
            raise UpstreamAttemptError(f"instance busy (HTTP {response.status}); retry after {wait_s:.0f}s", BUSY,
                                       status=response.status, retry_after_s=wait_s)
        if response.status >= 500:
            response.close()
            raise UpstreamAttemptError(f"instance answered HTTP {response.status}", STATUS_5XX)
        return UpstreamResponse(response, first_chunk, self.timeouts.idle_s)
