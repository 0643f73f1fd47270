"""One request, one rendering: classification, the cache key, routing and cache replay all read
the text, token count and prefix hashes the request derived when ingress built it."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import replace
from typing import Any, AsyncIterator, Callable

import orjson
import pytest
from prometheus_client import CollectorRegistry

from fleetgate.cache.index import Namespace
from fleetgate.cache.keys import RequestKey, request_key
from fleetgate.core import prefix, tokens
from fleetgate.core.plan import CacheHit, CacheLookup, CacheMiss, RoutePlan
from fleetgate.core.request import InferenceRequest
from fleetgate.core.usage import Usage
from fleetgate.policies.static_planner import StaticPlanner
from fleetgate.pools.model import Endpoint, Pool
from fleetgate.pools.registry import FleetRegistry, HealthPolicy
from fleetgate.router.gateway import Gateway
from fleetgate.router.ingress import parse_inference_request
from fleetgate.router.metrics import GatewayMetrics
from fleetgate.router.routing.base import RouteRequest
from fleetgate.router.routing.dualmap import DualMap

BODY = {
    "model": "m",
    "messages": [{"role": "system", "content": "You answer questions about routing. " * 30},
                 {"role": "user", "content": "What is prefix affinity?"}],
    "tools": [{"type": "function", "function": {"name": "lookup"}}],
    "stream_options": {"include_usage": True},
}
ANSWER = "Sending equal prefixes to the same instance."


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts renderings, prefix hashings and token counts of the routing text, wherever in
    fleetgate they are called from (every module's binding of the function is wrapped)."""
    counted: Counter[str] = Counter()

    def counting(name: str, original: Callable[..., Any], count_if: Callable[..., bool]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counted[name] += count_if(*args)
            return original(*args, **kwargs)
        return wrapper

    def is_prompt(text: str) -> bool:
        return text.startswith("<|tools|>")  # the rendered chat, not the completion text

    for name, original, count_if in [("render", prefix.render_chat_marked, lambda *_: True),
                                     ("prefix_hashes", prefix.prefix_hashes, lambda *_: True),
                                     ("count_tokens", tokens.count_tokens, is_prompt)]:
        wrapper = counting(name, original, count_if)
        for module in list(sys.modules.values()):
            if module.__name__.startswith("fleetgate.") and getattr(module, original.__name__, None) is original:
                monkeypatch.setattr(module, original.__name__, wrapper)
    return counted


class FakeCache:
    """A ResponseCache that keys requests as the semantic cache does and answers `hit` or misses."""

    def __init__(self, hit: CacheHit | None) -> None:
        self.hit = hit
        self.keys: list[RequestKey | None] = []
        self.stored: list[str] = []

    async def lookup(self, request: InferenceRequest, plan: RoutePlan) -> CacheLookup:
        key = request_key(request, Namespace(request.tenant, request.model, plan.profile.category))
        self.keys.append(key)
        return self.hit if self.hit is not None else CacheMiss(key)

    async def store(self, miss: CacheMiss, text: str, finish_reason: str, usage: Usage | None = None) -> None:
        self.stored.append(text)

    def release(self, miss: CacheMiss) -> None:
        raise AssertionError("a clean answer must be stored, not released")

    def set_pool_pressure(self, pool: str, over_slo: bool) -> None:
        pass


class CachingPlanner(StaticPlanner):
    """The static planner (which classifies) with the cache switched on."""

    async def plan(self, request: InferenceRequest) -> RoutePlan:
        return replace(await super().plan(request), cache_policy="default")


class FakeUpstream:
    """An instance that answers at once: one SSE stream or one chat.completion body."""

    class Response:
        status = 200

        def __init__(self, payload: bytes, content_type: str) -> None:
            self.payload, self.content_type = payload, content_type

        async def chunks(self) -> AsyncIterator[bytes]:
            yield self.payload

        async def read_all(self) -> bytes:
            return self.payload

        def close(self) -> None:
            pass

    async def open(self, url: str, body: bytes, headers: Any, *, stream: bool) -> Response:
        if stream:
            chunk = {"choices": [{"index": 0, "delta": {"content": ANSWER}, "finish_reason": "stop"}]}
            return self.Response(b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n", "text/event-stream")
        body_ = {"choices": [{"index": 0, "message": {"content": ANSWER}, "finish_reason": "stop"}]}
        return self.Response(orjson.dumps(body_), "application/json")


class RecordingDualMap(DualMap):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[RouteRequest] = []

    def route(self, request: RouteRequest, instances: Any, now_s: float) -> Any:
        self.seen.append(request)
        return super().route(request, instances, now_s)


async def serve(stream: bool, cache: FakeCache) -> tuple[InferenceRequest, bytes, RecordingDualMap]:
    endpoints = tuple(Endpoint(f"e{i}", f"http://e{i}", "p", "m") for i in range(2))
    pools = {"p": Pool("p", "m", endpoints)}
    router = RecordingDualMap()
    gateway = Gateway(registry=FleetRegistry(pools, policy=HealthPolicy(probe_interval_s=0.5, probe_timeout_s=1.0, eject_cooldown_s=1.0)), planner=CachingPlanner(pools, "dualmap"), upstream=FakeUpstream(),
                      metrics=GatewayMetrics(CollectorRegistry()), router_factory=lambda _name, **_: router,
                      cache=cache, max_attempts=2, resend_check_s=0.05)
    raw = orjson.dumps({**BODY, "stream": stream})
    request = parse_inference_request(raw, "chat", request_id="r1", arrival_s=0.0, headers={})
    response = await gateway.handle(request, raw, {})
    body = response.body if response.stream is None else b"".join([chunk async for chunk in response.stream])
    assert response.status == 200 and body is not None
    return request, body, router


@pytest.mark.parametrize("stream", [False, True])
async def test_a_routed_request_renders_its_prompt_once(calls: Counter[str], stream: bool) -> None:
    cache = FakeCache(hit=None)
    request, _, router = await serve(stream, cache)
    assert calls == Counter(render=1, prefix_hashes=1, count_tokens=1)
    assert cache.stored == [ANSWER]  # the request went through classify, cache lookup, routing and store
    key = cache.keys[0]
    assert key is not None and key.text == "What is prefix affinity?"
    [seen] = router.seen
    assert seen.prefix_hashes is request.prefix_hashes and seen.prompt_tokens == request.prompt_tokens


@pytest.mark.parametrize("stream", [False, True])
async def test_a_cache_hit_renders_its_prompt_once_and_reports_its_tokens(calls: Counter[str], stream: bool) -> None:
    request, body, router = await serve(stream, FakeCache(hit=CacheHit(ANSWER, "stop", 0.97)))
    assert calls == Counter(render=1, prefix_hashes=1, count_tokens=1)
    assert router.seen == []
    assert f'"prompt_tokens":{request.prompt_tokens},'.encode() in body
