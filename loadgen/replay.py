"""Open-loop trace replay against any OpenAI-compatible endpoint, measured per request.

Open loop: a scheduler task launches every request at its trace time and never waits for earlier
ones, so a slow target shows up as latency, not as a slower offered load (closed-loop generators
hide overload). The client is deliberately cheap: one aiohttp session, SSE lines parsed with orjson,
no OpenAI SDK, so the generator is never the bottleneck of a benchmark (`fleetgate bench loadgen`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import Any, Callable, Coroutine, TypeVar

import aiohttp
import orjson

from fleetgate.core.clock import Clock, monotonic_clock
from fleetgate.loadgen.traces import TraceRequest

log = logging.getLogger("fleetgate.loadgen")

REPLICA_HEADER = "x-fleetgate-replica"  # on Ray Serve: <node>/<replica id> of the replica that answered
ROUTE_HEADERS = {
    "x-fleetgate-pool": "pool",
    "x-fleetgate-instance": "instance",
    "x-fleetgate-route": "route",
    "x-fleetgate-rule": "rule",
    REPLICA_HEADER: "replica",
}
ESTIMATE_HEADER = "x-fleetgate-estimated-ttft-ms"  # the gateway's TTFT estimate for a streamed request
API_KINDS = ("auto", "chat", "completions")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    target: str  # base URL, e.g. http://127.0.0.1:8000 (a trailing /v1 is accepted)
    model: str
    rate_scale: float = 1.0  # 2.0 sends the trace twice as fast
    duration_s: float | None = None  # only requests scheduled before this many seconds
    max_requests: int | None = None
    concurrency_cap: int = 1000  # requests in flight at once; arrivals beyond it are dropped, not queued
    api: str = "auto"  # auto: messages -> chat, prompt -> completions
    request_timeout_s: float = 600.0
    ignore_eos: bool = True  # vLLM extension: generate exactly the traced output length
    start_delay_s: float = 0.05  # head start so the first sends are not late behind set-up work
    headers: tuple[tuple[str, str], ...] = ()  # sent with every request, e.g. a tenant's Authorization


@dataclass(frozen=True, slots=True)
class Scheduled:
    index: int
    send_at_s: float  # seconds after the replay start
    request: TraceRequest


@dataclass(frozen=True, slots=True)
class RequestResult:
    """One replayed request; times in seconds from the replay start, latencies in ms."""

    index: int
    scheduled_s: float
    sent_s: float | None  # None: never sent (dropped at the concurrency cap)
    ttft_ms: float | None
    tpot_ms: float | None
    e2e_ms: float | None
    status: int  # HTTP status, 0 when there was no response
    error: str | None  # error kind: dropped, http_<code>, timeout, connect, disconnect, stream_error, ...
    error_detail: str | None
    input_tokens: int  # from the trace
    requested_tokens: int
    prompt_tokens: int | None  # from the target's usage report
    completion_tokens: int | None
    cached_tokens: int | None
    session_id: str | None
    pool: str | None = None
    instance: str | None = None
    route: str | None = None
    rule: str | None = None
    estimated_ttft_ms: float | None = None  # the gateway's estimate (ESTIMATE_HEADER), where it made one
    replica: str | None = None


def to_emulated_time(result: RequestResult, time_scale: float) -> RequestResult:
    """Wall-clock measurements of a time-scaled fleet -> emulated (real-GPU) seconds."""
    def scaled(value: float | None) -> float | None:
        return None if value is None else value / time_scale

    return replace(
        result, scheduled_s=result.scheduled_s / time_scale, sent_s=scaled(result.sent_s),
        ttft_ms=scaled(result.ttft_ms), tpot_ms=scaled(result.tpot_ms), e2e_ms=scaled(result.e2e_ms),
    )


def schedule(requests: tuple[TraceRequest, ...] | list[TraceRequest], config: ReplayConfig) -> list[Scheduled]:
    """Trace arrivals -> send times: rate-scaled, cut at duration_s and max_requests."""
    if config.rate_scale <= 0:
        raise ValueError("rate_scale must be > 0")
    out: list[Scheduled] = []
    for request in requests:
        if config.max_requests is not None and len(out) >= config.max_requests:
            break
        send_at_s = request.arrival_s / config.rate_scale
        if config.duration_s is not None and send_at_s >= config.duration_s:
            break
        out.append(Scheduled(len(out), send_at_s, request))
    return out


def base_url(target: str) -> str:
    target = target.rstrip("/")
    return target[: -len("/v1")] if target.endswith("/v1") else target


def request_body(request: TraceRequest, config: ReplayConfig) -> tuple[str, bytes]:
    """(path, JSON body) of one streaming request asking for usage (with cached tokens) at the end."""
    use_chat = config.api == "chat" or (config.api == "auto" and request.messages is not None)
    body: dict = {
        "model": config.model,
        "max_tokens": max(request.output_tokens, 1),
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.0,
    }
    if config.ignore_eos:
        body["ignore_eos"] = True
    if use_chat:
        body["messages"] = list(request.messages or ({"role": "user", "content": request.prompt or ""},))
        return "/v1/chat/completions", orjson.dumps(body)
    if request.prompt is not None:
        body["prompt"] = request.prompt
    else:  # completions API asked for a chat trace: the rendered conversation is the prompt
        body["prompt"] = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in request.messages or ())
    return "/v1/completions", orjson.dumps(body)


async def detect_model(session: aiohttp.ClientSession, target: str) -> str:
    """The first model the target lists at GET /v1/models."""
    try:
        async with session.get(f"{base_url(target)}/v1/models") as response:
            response.raise_for_status()
            listing = orjson.loads(await response.read())
    except (aiohttp.ClientError, OSError) as error:
        raise RuntimeError(f"cannot list models at {target}/v1/models ({error}); is the target up?") from None
    models = [entry["id"] for entry in listing.get("data", []) if "id" in entry]
    if not models:
        raise RuntimeError(f"{target} lists no models at /v1/models; pass --model")
    return models[0]


class _Stream:
    """What one response stream told us so far (filled in as chunks arrive)."""

    __slots__ = ("first_s", "last_s", "chunks", "usage", "error", "detail")

    def __init__(self) -> None:
        self.first_s: float | None = None
        self.last_s: float | None = None
        self.chunks = 0
        self.usage: dict | None = None
        self.error: str | None = None
        self.detail: str | None = None

    def feed(self, chunk: dict, now_s: float) -> None:
        if "error" in chunk:
            self.error, self.detail = "stream_error", str(chunk["error"])[:200]
            return
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta")
            text = (delta.get("content") or delta.get("reasoning_content")) if delta else choice.get("text")
            if text:
                if self.first_s is None:
                    self.first_s = now_s
                self.last_s = now_s
                self.chunks += 1


class Replayer:
    """Sends scheduled requests open loop over one shared session and collects RequestResults."""

    def __init__(
        self,
        config: ReplayConfig,
        session: aiohttp.ClientSession,
        *,
        clock: Clock = monotonic_clock,
        on_result: Callable[[RequestResult], None] | None = None,
    ) -> None:
        self._config = config
        self._session = session
        self._clock = clock
        self._on_result = on_result
        self._base = base_url(config.target)
        self._in_flight: set[asyncio.Task] = set()
        self._start_s = 0.0
        self.results: list[RequestResult] = []

    async def run(self, plan: list[Scheduled], stop: asyncio.Event | None = None) -> list[RequestResult]:
        """Replay `plan`; when `stop` is set, stop sending, cancel in-flight requests and return what we have."""
        stop = stop or asyncio.Event()
        self._start_s = self._clock() + self._config.start_delay_s
        sender = asyncio.create_task(self._send_all(plan))
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({sender, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, stopper, *self._in_flight):
                task.cancel()
            await asyncio.gather(sender, stopper, *self._in_flight, return_exceptions=True)
        self.results.sort(key=lambda r: r.index)
        return self.results

    async def _send_all(self, plan: list[Scheduled]) -> None:
        for item in plan:
            delay_s = self._start_s + item.send_at_s - self._clock()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            if len(self._in_flight) >= self._config.concurrency_cap:
                self._record(self._dropped(item))
                continue
            task = asyncio.create_task(self._send(item))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    def _record(self, result: RequestResult) -> None:
        self.results.append(result)
        if self._on_result is not None:
            self._on_result(result)

    def _dropped(self, item: Scheduled) -> RequestResult:
        request = item.request
        return RequestResult(
            item.index, item.send_at_s, None, None, None, None, 0, "dropped", "concurrency cap reached",
            request.input_tokens, request.output_tokens, None, None, None, request.session_id,
        )  # fmt: skip

    async def _send(self, item: Scheduled) -> None:
        path, body = request_body(item.request, self._config)
        headers = {"content-type": "application/json", **dict(self._config.headers)}
        if item.request.session_id:
            headers["x-session-id"] = item.request.session_id
        sent_s = self._clock()
        stream = _Stream()
        status = 0
        route: dict[str, str | float | None] = {}
        try:
            async with self._session.post(self._base + path, data=body, headers=headers) as response:
                status = response.status
                route = {field: response.headers.get(header) for header, field in ROUTE_HEADERS.items()}
                route["estimated_ttft_ms"] = _number(response.headers.get(ESTIMATE_HEADER))
                if status >= 400:
                    stream.error, stream.detail = f"http_{status}", (await response.text())[:200]
                elif response.content_type == "application/json":  # a target that ignored stream=true
                    stream.feed(_as_chunk(orjson.loads(await response.read())), self._clock())
                else:
                    await self._read_sse(response, stream)
        except asyncio.CancelledError:
            stream.error, stream.detail = "interrupted", "replay stopped"
            self._record(self._result(item, sent_s, status, stream, route))
            raise
        except asyncio.TimeoutError:
            stream.error, stream.detail = "timeout", f"no answer in {self._config.request_timeout_s} s"
        except aiohttp.ClientConnectorError as exc:
            stream.error, stream.detail = "connect", str(exc)[:200]
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            stream.error, stream.detail = "disconnect", str(exc)[:200]
        except aiohttp.ClientError as exc:
            stream.error, stream.detail = "client_error", f"{type(exc).__name__}: {exc}"[:200]
        except ValueError as exc:  # undecodable JSON chunk, or an SSE line over the read buffer
            stream.error, stream.detail = "bad_stream", str(exc)[:200]
        if stream.error is None and stream.first_s is None:
            stream.error, stream.detail = "empty", "no tokens in the response"
        self._record(self._result(item, sent_s, status, stream, route))

    async def _read_sse(self, response: aiohttp.ClientResponse, stream: _Stream) -> None:
        async for line in response.content:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return
            stream.feed(orjson.loads(payload), self._clock())
            if stream.error is not None:
                return

    def _result(
        self, item: Scheduled, sent_s: float, status: int, stream: _Stream, route: dict[str, str | float | None]
    ) -> RequestResult:
        finished_s = self._clock()
        usage = stream.usage or {}
        completion = usage.get("completion_tokens")
        produced = completion if isinstance(completion, int) else stream.chunks
        ttft_ms = tpot_ms = None
        if stream.first_s is not None:
            ttft_ms = (stream.first_s - sent_s) * 1000
            if produced > 1 and stream.last_s is not None:
                tpot_ms = (stream.last_s - stream.first_s) * 1000 / (produced - 1)
        details = usage.get("prompt_tokens_details") or {}
        request = item.request
        return RequestResult(
            index=item.index,
            scheduled_s=item.send_at_s,
            sent_s=sent_s - self._start_s,
            ttft_ms=ttft_ms,
            tpot_ms=tpot_ms,
            e2e_ms=(finished_s - sent_s) * 1000,
            status=status,
            error=stream.error,
            error_detail=stream.detail,
            input_tokens=request.input_tokens,
            requested_tokens=max(request.output_tokens, 1),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=completion,
            cached_tokens=details.get("cached_tokens"),
            session_id=request.session_id,
            **route,
        )


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _as_chunk(response: dict) -> dict:
    """A non-streamed completion seen as one stream chunk (message content -> delta content)."""
    choices = [
        {"delta": choice["message"]} if "message" in choice else choice for choice in response.get("choices") or ()
    ]
    return {**response, "choices": choices}


def make_session(config: ReplayConfig) -> aiohttp.ClientSession:
    """One pooled session: TCP connections capped at the concurrency cap, reused across requests."""
    connector = aiohttp.TCPConnector(limit=config.concurrency_cap, limit_per_host=0, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=config.request_timeout_s, sock_connect=10)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, read_bufsize=1 << 20)


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    model: str
    results: list[RequestResult]
    interrupted: bool
    wall_s: float


async def replay_trace(
    requests: tuple[TraceRequest, ...] | list[TraceRequest],
    config: ReplayConfig,
    *,
    progress: bool = True,
    stop: asyncio.Event | None = None,
    clock: Clock = monotonic_clock,
) -> ReplayOutcome:
    """Replay a trace with a progress bar; an empty `config.model` is read from the target's /v1/models."""
    from tqdm import tqdm

    stop = stop or asyncio.Event()
    async with make_session(config) as session:
        if not config.model:
            config = replace(config, model=await detect_model(session, config.target))
        plan = schedule(requests, config)
        span_s = plan[-1].send_at_s if plan else 0.0
        with tqdm(total=len(plan), unit="req", desc=f"replay {span_s:.0f}s", disable=not progress, mininterval=0.5) as bar:
            replayer = Replayer(config, session, clock=clock, on_result=lambda _r: bar.update())
            started_s = clock()
            results = await replayer.run(plan, stop)
    return ReplayOutcome(config.model, results, stop.is_set(), clock() - started_s)


def run_event_loop(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run `main()` on uvloop when it is installed (about twice the requests/s per core for this
    client), else on the standard loop; either way the replay is correct, only the ceiling moves."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())
