"""An aiohttp server that speaks vLLM's OpenAI API on top of the engine model.

One asyncio task drives the engine: it runs a step, sleeps the step's duration (times
`time_scale`: below 1 the instance runs faster than real time), then hands each request the
tokens the step produced. Emulated time follows the wall clock divided by time_scale, so every
time the server reports (metrics histograms) is in emulated seconds, and a driver that falls
behind (an overloaded CPU) shows up as latency instead of being hidden.

Endpoints: POST /v1/chat/completions, POST /v1/completions, POST /v1/messages (Anthropic's, as
vLLM serves it: anthropic.py), POST /v1/responses and GET /v1/responses/{id} (responses.py) (SSE or
not); POST /v1/embeddings (with serves="embed", vLLM's pooling runner, which then serves no
generation), POST /tokenize and /detokenize (pooling.py); the prompt renderers
POST /v1/chat/completions/render and /v1/completions/render (the token ids vllm-router's
cache_aware policy asks for), GET /v1/models, GET /health, GET /metrics. With `kv_events_port`
it also publishes vLLM's KV-cache events on tcp://host:port (kv_publisher.py). Test-only:
POST /admin/fault {"mode": ...} flips failure behaviour (see `FAULT_MODES`), GET /admin/stats
returns the engine's counters as JSON.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import struct
import time
import uuid
from typing import Any, Awaitable, Callable, TypeVar

import orjson
import pydantic
from aiohttp import web

from fleetgate.core.clock import Clock, monotonic_clock
from fleetgate.core.tokens import CHARS_PER_TOKEN, KV_BLOCK_TOKENS, count_tokens
from fleetgate.pools.emulator.engine import (
    Engine,
    EngineRequest,
    EngineStats,
    RequestStats,
    StepOutput,
)
from fleetgate.core.usage import Usage
from fleetgate.pools.emulator.anthropic import error_body as messages_error_body
from fleetgate.pools.emulator.anthropic import MessageWire, parse_messages
from fleetgate.pools.emulator.lora import LoraError, LoraSlots
from fleetgate.pools.emulator.pooling import (
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
    detokenized,
    embedding_inputs,
    embeddings_body,
)
from fleetgate.pools.emulator.responses import ResponsesJob, ResponseStore, ResponseWire
from fleetgate.pools.emulator.kv_publisher import KvEventPublisher
from fleetgate.pools.emulator.metrics import EmulatorMetrics
from fleetgate.pools.emulator.protocol import (
    SCHEMA_ERROR,
    DONE_EVENT,
    ApiKind,
    BadRequest,
    ChatCompletionRequest,
    CompletionRequest,
    chunk_event,
    error_body,
    parse_request,
    response_body,
    usage,
)
from fleetgate.pools.emulator.text import (
    answer_seed,
    answer_text,
    natural_length,
    render_chat_prompt,
)
from fleetgate.pools.kv_keys import chain_keys, char_token_bytes
from fleetgate.pools.profiles import GpuProfile, get_profile

log = logging.getLogger("fleetgate.emulator")

FAULT_MODES = ("ok", "hang", "reset", "slow:N", "retry-after:N")
"""Test-only failure modes, besides an HTTP status ("503", "500", "429", ...) that inference
endpoints and /health answer with: "hang" accepts inference requests and never sends a byte
(health stays 200, as a wedged engine does); "reset" closes the connection after the first
streamed chunk (or before a non-streamed answer); "slow:N" makes every engine step take N times
as long (a latency outlier; 1 <= N <= 1000); "retry-after:N" answers generation requests 503 with
`Retry-After: N` for the next N seconds, then serves again (an overloaded engine; health stays 200)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Job:
    """A validated generation request."""

    kind: ApiKind
    prompt_text: str
    prompt_tokens: int
    max_tokens: int  # the sampling limit, resolved as vLLM does
    output_tokens: int  # what the emulated model generates: max_tokens, or fewer when it stops naturally
    seed: int
    stream: bool
    include_usage: bool
    stops_naturally: bool  # the answer ends (EOS) before max_tokens: finish_reason "stop"
    model: str  # what answers: the base model or the LoRA adapter asked for (its name is echoed)

    def finish_reason(self, stats: RequestStats) -> str:
        return "stop" if self.stops_naturally and stats.finish_reason == "length" else stats.finish_reason


_Body = TypeVar("_Body", bound=pydantic.BaseModel)
_Wire = MessageWire | ResponseWire
"""An answer in another API's shapes than the OpenAI ones the chat path writes itself."""


class _Pending:
    """Delivery state of one request in flight: the driver puts token counts, then its stats."""

    __slots__ = ("queue", "arrival_s", "started")

    def __init__(self, arrival_s: float) -> None:
        self.queue: asyncio.Queue[int | RequestStats] = asyncio.Queue()
        self.arrival_s = arrival_s
        self.started = False


def _parse_fault(mode: object) -> str:
    text = str(mode)
    if text in ("ok", "hang", "reset") or (text.isdigit() and 400 <= int(text) <= 599):
        return text
    name, _, value = text.partition(":")
    if name == "slow" and 1 <= _number(value) <= 1000 or name == "retry-after" and value.isdigit() and 1 <= int(value) <= 3600:
        return text
    raise ValueError(f"unknown fault mode {mode!r}; use one of {', '.join(FAULT_MODES)} or an HTTP status 400-599")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


class EmulatorServer:
    """One emulated vLLM instance: engine, driver task, HTTP app."""

    def __init__(
        self,
        profile: GpuProfile | str,
        model: str,
        *,
        time_scale: float = 1.0,
        max_model_len: int | None = None,
        kv_cache_tokens: int | None = None,
        enable_prefix_caching: bool = True,
        default_max_tokens: int = 256,
        clock: Clock = monotonic_clock,
        fail_with_status: int | None = None,
        hang_before_first_byte: bool = False,
        kv_events_port: int | None = None,
        serves: str = "generate",
        max_loras: int = 0,
        lora_load_s: float = 0.5,
        lora_modules: dict[str, str] | None = None,
    ) -> None:
        """`max_loras` > 0 enables LoRA adapters (lora.py: that many slots, `lora_load_s` emulated seconds
        a runtime load takes, `lora_modules` name -> path loaded at start), as vllm --enable-lora
        --max-loras with VLLM_ALLOW_RUNTIME_LORA_UPDATING does."""
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        base = get_profile(profile) if isinstance(profile, str) else profile
        self.profile = dataclasses.replace(base, max_model_len=max_model_len) if max_model_len else base
        self.model = model
        if serves not in ("generate", "embed"):
            raise ValueError("serves must be generate or embed")
        self.serves = serves
        self.responses = ResponseStore()
        self.time_scale = time_scale
        self.default_max_tokens = default_max_tokens
        self.engine = Engine(self.profile, kv_cache_tokens=kv_cache_tokens, enable_prefix_caching=enable_prefix_caching)
        self.lora = LoraSlots(max_loras, load_s=lora_load_s, modules=lora_modules,
                              sleep=lambda s: asyncio.sleep(s * self.time_scale)) if max_loras else None
        self.metrics = EmulatorMetrics(self.engine.stats, model, num_gpu_blocks=self.engine.total_blocks, lora=self.lora,
                                       enable_prefix_caching=enable_prefix_caching)
        self.fault = _parse_fault(fail_with_status) if fail_with_status else ("hang" if hang_before_first_byte else "ok")
        self._clock = clock
        self._busy_until_s = 0.0  # "retry-after:N": until then (wall clock), generation answers 503
        self._wall0 = clock()
        self._engine_end_s = 0.0
        self._pending: dict[str, _Pending] = {}
        self._wake = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._kv_events_port = kv_events_port
        self.kv_events: KvEventPublisher | None = None  # bound in `start`
        self._kv_task: asyncio.Task[None] | None = None
        self.url = ""
        self.app = self._build_app()

    # -- lifecycle ------------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_get("/v1/responses/{response_id}", self._stored_response)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/tokenize", self._tokenize)
        if self.lora is not None:
            app.router.add_post("/v1/load_lora_adapter", self._load_lora)
            app.router.add_post("/v1/unload_lora_adapter", self._unload_lora)
        app.router.add_post("/detokenize", self._detokenize)
        app.router.add_post("/v1/chat/completions/render", self._render_chat)
        app.router.add_post("/v1/completions/render", self._render_completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/admin/fault", self._admin_fault)
        app.router.add_get("/admin/stats", self._admin_stats)
        app.on_startup.append(self._start_driver)
        app.on_cleanup.append(self._stop_driver)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0: a free port); returns the base URL (OpenAI API under /v1)."""
        # handler_cancellation: a client that disconnects cancels its handler, which aborts the request.
        if self._kv_events_port is not None:
            self.kv_events = KvEventPublisher(host, self._kv_events_port)
            self.engine.kv_listener = self.kv_events
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{host}:{bound}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.kv_events is not None:
            self.kv_events.close()

    async def _start_driver(self, _app: web.Application) -> None:
        self._driver = asyncio.get_running_loop().create_task(self._drive(), name=f"emulator-driver-{self.model}")
        if self.kv_events is not None:
            self._kv_task = asyncio.get_running_loop().create_task(self.kv_events.run(), name="emulator-kv-events")

    async def _stop_driver(self, _app: web.Application) -> None:
        for task in (self._driver, self._kv_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass

    # -- time and the engine loop ---------------------------------------------------------------

    def now_s(self) -> float:
        """Emulated seconds since the server was built."""
        return (self._clock() - self._wall0) / self.time_scale

    def stats(self) -> EngineStats:
        return self.engine.stats()

    async def _drive(self) -> None:
        try:
            await self._drive_steps()
        except Exception:
            log.exception("emulator driver of %s failed; requests in flight will not finish", self.url)
            raise

    async def _drive_steps(self) -> None:
        while True:
            if not self.engine.has_work():
                self._wake.clear()
                await self._wake.wait()
                continue
            start_s = max(self.now_s(), self._engine_end_s)
            out = self.engine.step(start_s)
            if self.kv_events is not None:
                self.kv_events.flush()
            end_s = start_s + out.duration_s
            self._engine_end_s = end_s
            if self.fault.startswith("slow:"):  # the step takes N times as long: emulated time runs slower
                self._wall0 += out.duration_s * self.time_scale * (float(self.fault[5:]) - 1)
            delay = self._wall0 + end_s * self.time_scale - self._clock()
            await asyncio.sleep(delay if delay > 0 else 0)
            self._deliver(out, end_s)

    def _deliver(self, out: StepOutput, end_s: float) -> None:
        for request_id, count in out.new_tokens.items():
            pending = self._pending.get(request_id)
            if pending is None:
                continue
            if not pending.started:
                pending.started = True
                self.metrics.ttft.observe(end_s - pending.arrival_s)
            pending.queue.put_nowait(count)
        for stats in out.finished:
            self.metrics.e2e.observe(stats.finished_s - stats.arrival_s)
            pending = self._pending.get(stats.request_id)
            if pending is not None:
                pending.queue.put_nowait(stats)

    # -- generation -----------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completion")

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "messages")

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "responses")

    async def _generate(self, request: web.Request, kind: ApiKind) -> web.StreamResponse:
        fault = self.fault
        if self.serves != "generate":
            return _not_served()
        if fault.isdigit():
            return _error(f"emulated failure (fault mode {fault})", int(fault), kind=kind)
        if fault.startswith("retry-after:") and self._clock() < self._busy_until_s:
            busy = _error("emulated overload: retry later", 503, kind=kind)
            busy.headers["Retry-After"] = fault.partition(":")[2]
            return busy
        responses: ResponsesJob | None = None
        try:
            raw = await request.read()
            if kind == "responses":
                responses = ResponsesJob(raw, self.responses)
                job = self._job(responses.chat(), kind)
            else:
                job = self._job(parse_messages(raw) if kind == "messages" else parse_request(raw, kind), kind)
        except BadRequest as exc:
            return _error(str(exc), exc.status, exc.param, kind=kind, error_kind=exc.kind)
        if fault == "hang":
            await asyncio.Event().wait()  # until the client gives up (its disconnect cancels us)
        prefix, engine_id = "cmpl" if kind == "completion" else "chatcmpl", uuid.uuid4().hex
        request_id = f"{prefix}-{engine_id}"  # the engine's: unique even when clients reuse an X-Request-Id
        answer_id = f"{prefix}-{request.headers.get('X-Request-Id') or engine_id}"  # vLLM names its answer after it
        arrival_s = self.now_s()
        pending = _Pending(arrival_s)
        self._pending[request_id] = pending
        token_bytes = char_token_bytes(job.prompt_text)
        if self.kv_events is not None:
            self.kv_events.track(request_id, token_bytes)
        self.engine.add(
            EngineRequest(request_id, chain_keys(token_bytes, KV_BLOCK_TOKENS), job.prompt_tokens, job.output_tokens, arrival_s)
        )
        self._wake.set()
        wire = (MessageWire(answer_id, job.model, job.prompt_tokens) if kind == "messages"
                else ResponseWire(responses, job.model, self.responses) if responses is not None else None)
        if job.model != self.model and self.lora is not None:
            self.lora.started(job.model)
        try:
            if job.stream:
                return await self._stream(request, job, answer_id, pending, wire)
            return await self._complete(request, job, answer_id, pending, wire)
        finally:
            # Finished requests are already gone from the engine; anything else (disconnect) is aborted.
            self._pending.pop(request_id, None)
            if self.engine.abort(request_id, now_s=self.now_s()) is not None:
                log.debug("aborted %s", request_id)
            if self.kv_events is not None:
                self.kv_events.untrack(request_id)
            if job.model != self.model and self.lora is not None:
                self.lora.finished(job.model)

    def _job(self, body: ChatCompletionRequest | CompletionRequest, kind: ApiKind) -> _Job:
        """Render the prompt and check it against the model, as vLLM's serving layer does."""
        adapter = body.model if self.lora is not None and body.model is not None and self.lora.has(body.model) else None
        if body.model is not None and body.model != self.model and adapter is None:
            raise BadRequest(f"The model `{body.model}` does not exist.", status=404, param="model")
        if isinstance(body, ChatCompletionRequest):
            text = render_chat_prompt([m.model_dump(exclude_none=True) for m in body.messages], body.tools)
            requested = body.max_completion_tokens or body.max_tokens
        else:
            text = _prompt_text(body.prompt)
            requested = body.max_tokens
        prompt_tokens = count_tokens(text)
        limit = self.engine.max_model_len
        if requested is not None and requested > limit:
            raise BadRequest(f"max_tokens={requested} cannot be greater than max_model_len={limit}. Please request "
                             f"fewer output tokens. (parameter=max_tokens, value={requested})", param="max_tokens")
        if prompt_tokens >= limit:
            raise BadRequest(
                f"This model's maximum context length is {limit} tokens. However, your prompt contains "
                f"{prompt_tokens} input tokens, which exceeds this limit even without any output tokens. Please "
                f"reduce the length of the input prompt. (parameter=input_tokens, value={prompt_tokens})",
                param="input_tokens",
            )
        # As vLLM 0.32: an answer that would run past the context is cut there (finish "length"), not refused.
        max_tokens = min(requested if requested is not None else self.default_max_tokens, limit - prompt_tokens)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        seed = answer_seed(text if adapter is None else f"{adapter}\0{text}", body.seed)  # each adapter answers its own way
        natural = natural_length(seed)
        stops_naturally = not body.ignore_eos and natural < max_tokens
        return _Job(kind, text, prompt_tokens, max_tokens, natural if stops_naturally else max_tokens, seed, body.stream,
                    include_usage, stops_naturally, adapter or self.model)

    async def _complete(self, request: web.Request, job: _Job, answer_id: str, pending: _Pending,
                        wire: _Wire | None) -> web.Response:
        while not isinstance(stats := await pending.queue.get(), RequestStats):
            pass
        if self.fault == "reset" and request.transport is not None:
            request.transport.close()
        text = answer_text(job.seed, 0, stats.output_tokens)
        if wire is not None:
            return _json(wire.whole(text, job.finish_reason(stats), _usage_of(stats)))
        body = response_body(
            job.kind, answer_id, int(time.time()), job.model, text, job.finish_reason(stats),
            usage(stats.prompt_tokens, stats.output_tokens, stats.cached_tokens),
        )
        return web.Response(body=body, content_type="application/json")

    async def _stream(self, request: web.Request, job: _Job, answer_id: str, pending: _Pending,
                      wire: _Wire | None) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        created = int(time.time())
        event = lambda **kw: chunk_event(job.kind, answer_id, created, job.model, **kw)  # noqa: E731
        if wire is not None:
            await response.write(wire.start())
        sent = 0
        try:
            while True:
                items = [await pending.queue.get()]
                while not pending.queue.empty():  # a slow reader gets the backlog in one chunk, as vLLM merges deltas
                    items.append(pending.queue.get_nowait())
                count = sum(i for i in items if isinstance(i, int))
                done = next((i for i in items if isinstance(i, RequestStats)), None)
                events: list[bytes] = []
                if wire is not None:
                    events.append(wire.delta(answer_text(job.seed, sent, sent + count)))
                    if done is not None:
                        events.append(wire.end(answer_text(job.seed, 0, done.output_tokens), job.finish_reason(done),
                                               _usage_of(done)))
                else:
                    if sent == 0 and job.kind == "chat":
                        events.append(event(role=True))
                    events.append(event(text=answer_text(job.seed, sent, sent + count),
                                        finish_reason=done and job.finish_reason(done),
                                        fingerprint=done is not None and not job.include_usage))
                sent += count
                if done is not None and wire is None:
                    if job.include_usage:
                        events.append(event(usage_=usage(done.prompt_tokens, done.output_tokens, done.cached_tokens),
                                            fingerprint=True))
                    events.append(DONE_EVENT)
                await response.write(b"".join(events))
                if self.fault == "reset" and request.transport is not None:
                    request.transport.close()
                    return response
                if done is not None:
                    await response.write_eof()
                    return response
        except ConnectionResetError:
            return response  # the client went away; the caller aborts the request

    # -- prompt rendering -----------------------------------------------------------------------

    async def _render_chat(self, request: web.Request) -> web.Response:
        return await self._render(request, "chat")

    async def _render_completions(self, request: web.Request) -> web.Response:
        return await self._render(request, "completion")

    async def _render(self, request: web.Request, kind: ApiKind) -> web.Response:
        """vLLM's render endpoints: the request validated and tokenized as generation would, returned
        as a token-in `GenerateRequest` (chat: one object; completions: a list, one per prompt). The
        engine is not touched, so only status faults apply (a wedged engine still renders)."""
        if self.fault.isdigit():
            return _error(f"emulated failure (fault mode {self.fault})", int(self.fault))
        try:
            body = parse_request(await request.read(), kind)
            job = self._job(body, kind)
        except BadRequest as exc:
            return _error(str(exc), exc.status, exc.param)
        extra = body.model_extra or {}
        rendered = {
            "request_id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}",
            "token_ids": _prompt_token_ids(job.prompt_text),
            "features": None,  # no multimodal inputs
            "sampling_params": {"n": 1, "max_tokens": job.max_tokens, "seed": body.seed, "ignore_eos": body.ignore_eos},
            "model": body.model,
            "stream": body.stream,
            "stream_options": body.stream_options.model_dump() if body.stream and body.stream_options else None,
            "cache_salt": extra.get("cache_salt"),
            "priority": extra.get("priority", 0),
            "kv_transfer_params": None,
        }
        return _json(rendered if kind == "chat" else [rendered])

    # -- other endpoints ------------------------------------------------------------------------

    async def _stored_response(self, request: web.Request) -> web.Response:
        response_id = request.match_info["response_id"]
        found = self.responses.get(response_id)
        if found is None:
            return _error(f"Response with id '{response_id}' not found.", 404, "response_id",
                          error_kind="invalid_request_error")
        return _json(found)

    async def _embeddings(self, request: web.Request) -> web.Response:
        """Each input is prefilled by the engine (it loads the instance as vLLM's pooling does), then embedded."""
        if self.serves != "embed":
            return _not_served()
        if self.fault.isdigit():
            return _error(f"emulated failure (fault mode {self.fault})", int(self.fault))
        try:
            body = _validated(EmbeddingRequest, await request.read())
            if body.model is not None and body.model != self.model:
                raise BadRequest(f"The model `{body.model}` does not exist.", status=404, param="model")
            texts = embedding_inputs(body)
            if not texts or not all(texts):
                raise BadRequest("The input must not be empty", param="input")
        except BadRequest as exc:
            return _error(str(exc), exc.status, exc.param)
        if self.fault == "hang":
            await asyncio.Event().wait()  # until the client gives up
        stats = await asyncio.gather(*(self._prefill(text) for text in texts))
        return _json(embeddings_body(self.model, texts, body.encoding_format, sum(s.prompt_tokens for s in stats)))

    async def _prefill(self, text: str) -> RequestStats:
        """Run `text` through the engine as a one-token request (its prefill is the work) and wait for it."""
        request_id = f"embd-{uuid.uuid4().hex}"
        pending = self._pending[request_id] = _Pending(self.now_s())
        self.engine.add(EngineRequest(request_id, chain_keys(char_token_bytes(text), KV_BLOCK_TOKENS), count_tokens(text),
                                      1, pending.arrival_s))
        self._wake.set()
        try:
            while not isinstance(stats := await pending.queue.get(), RequestStats):
                pass
            return stats
        finally:
            self._pending.pop(request_id, None)
            self.engine.abort(request_id, now_s=self.now_s())

    async def _tokenize(self, request: web.Request) -> web.Response:
        try:
            body = _validated(TokenizeRequest, await request.read())
            self._check_model(body.model)
            if body.messages is not None:
                text = render_chat_prompt(body.messages)
            elif body.prompt is not None:
                text = body.prompt
            else:
                raise BadRequest("give `prompt` or `messages`", param="prompt")
        except BadRequest as exc:
            return _error(str(exc), exc.status, exc.param)
        tokens = _prompt_token_ids(text)
        return _json({"count": len(tokens), "max_model_len": self.engine.max_model_len, "tokens": tokens,
                      "token_strs": None})

    async def _detokenize(self, request: web.Request) -> web.Response:
        try:
            body = _validated(DetokenizeRequest, await request.read())
            self._check_model(body.model)
        except BadRequest as exc:
            return _error(str(exc), exc.status, exc.param)
        return _json({"prompt": detokenized(body.tokens)})

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.model:
            raise BadRequest(f"The model `{model}` does not exist.", status=404, param="model")

    async def _models(self, _request: web.Request) -> web.Response:
        created = int(time.time())
        card = {
            "id": self.model, "object": "model", "created": created, "owned_by": "vllm",
            "root": self.model, "parent": None, "max_model_len": self.engine.max_model_len,
        }
        adapters = [{"id": name, "object": "model", "created": created, "owned_by": "vllm", "root": path,
                     "parent": self.model, "max_model_len": None}
                    for name, path in (self.lora.loaded() if self.lora is not None else {}).items()]
        return _json({"object": "list", "data": [card, *adapters]})

    async def _load_lora(self, request: web.Request) -> web.Response:
        """vLLM's runtime load: {"lora_name", "lora_path"}; answers in plain text, as vLLM does."""
        assert self.lora is not None
        lora = self.lora

        async def load(body: dict[str, Any]) -> str:
            name, path = body.get("lora_name"), body.get("lora_path")
            if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
                raise LoraError("Both 'lora_name' and 'lora_path' must be provided.", 400)
            await lora.load(name, path)
            return f"Success: LoRA adapter '{name}' added successfully."

        return await _lora_change(request, load)

    async def _unload_lora(self, request: web.Request) -> web.Response:
        assert self.lora is not None
        lora = self.lora

        async def unload(body: dict[str, Any]) -> str:
            name = body.get("lora_name")
            lora.unload(str(name))
            return f"Success: LoRA adapter '{name}' removed successfully."

        return await _lora_change(request, unload)

    async def _health(self, _request: web.Request) -> web.Response:
        if self.fault.isdigit():
            return _error(f"emulated failure (fault mode {self.fault})", int(self.fault))
        return web.Response(status=200)

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def _admin_fault(self, request: web.Request) -> web.Response:
        try:
            self.fault = _parse_fault(orjson.loads(await request.read()).get("mode"))
            if self.fault.startswith("retry-after:"):
                self._busy_until_s = self._clock() + int(self.fault.partition(":")[2])
        except (ValueError, AttributeError) as exc:
            return _error(str(exc), 400)
        log.info("%s fault mode -> %s", self.url, self.fault)
        return _json({"mode": self.fault})

    async def _admin_stats(self, _request: web.Request) -> web.Response:
        return _json(dataclasses.asdict(self.engine.stats()))


def _prompt_token_ids(text: str) -> list[int]:
    """The stand-in tokenizer's ids for `text`, one per `count_tokens` token: `char_token_bytes`
    (the ids the engine hashes into its cached blocks and its KV events carry) of the text padded
    with NULs to whole tokens, so a partial last token is an id too (ASCII: its bytes, zero-filled)."""
    packed = char_token_bytes(text + "\0" * (-len(text) % CHARS_PER_TOKEN))
    return list(struct.unpack(f"<{len(packed) // 4}I", packed))


def _prompt_text(prompt: str | list[str] | list[int]) -> str:
    """A completions prompt as text; token ids become 4 characters each so counts stay exact."""
    if isinstance(prompt, str):
        text = prompt
    elif prompt and all(isinstance(p, int) for p in prompt):
        text = "".join(f"{int(t) & 0xFFFF:04x}" for t in prompt)
    elif len(prompt) == 1:
        text = str(prompt[0])
    else:
        raise BadRequest("the emulator serves one prompt per request", param="prompt")
    if not text:
        raise BadRequest("The prompt must not be empty", param="prompt")
    return text


def _json(obj: Any) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


def _error(message: str, status: int, param: str | None = None, *, kind: ApiKind = "chat",
           error_kind: str | None = None) -> web.Response:
    """`error_kind`: vLLM's own error type name where its handler gives one."""
    if kind == "messages" and error_kind != SCHEMA_ERROR:
        body = messages_error_body(message, status)
    else:
        body = error_body(message, status, param, error_kind)
    return web.Response(status=status, body=body, content_type="application/json")


def _validated(model: type[_Body], raw: bytes) -> _Body:
    """`raw` as `model`, every problem a BadRequest naming its field."""
    try:
        return model.model_validate(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Invalid JSON body: {exc}", param="body") from None
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "body"
        raise BadRequest(f"{where}: {error['msg']}", param=where) from None


def _usage_of(stats: RequestStats) -> Usage:
    return Usage(stats.prompt_tokens, stats.output_tokens, stats.cached_tokens)


def _not_served() -> web.Response:
    """What vLLM answers on a route its runner does not register (generation on an embedding model, or
    embeddings on a generating one): FastAPI's plain 404."""
    return web.Response(status=404, body=b'{"detail":"Not Found"}', content_type="application/json")


async def _lora_change(request: web.Request, change: Callable[[dict[str, Any]], Awaitable[str]]) -> web.Response:
    """Run a LoRA load or unload on the request's JSON body, with vLLM's answers: plain text on success,
    its error shapes for a bad body or a refused change."""
    try:
        body = orjson.loads(await request.read())
        if not isinstance(body, dict):
            raise AttributeError
        return web.Response(text=await change(body))
    except (orjson.JSONDecodeError, AttributeError):
        return _error("Invalid JSON body", 400, "body")
    except LoraError as exc:
        return _error(str(exc), exc.status, error_kind="InvalidUserInput" if exc.status == 400 else "NotFoundError")
