"""Pure pieces of the gateway: request parsing, metrics scraping, completion extraction, errors,
local load bookkeeping, router capabilities."""

from __future__ import annotations

import orjson
import pytest

from fleetgate.core.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    UpstreamTimeoutError,
)
from fleetgate.pools.scrape import parse_vllm_metrics
from fleetgate.router.completion_text import completion_from_body, completion_from_sse
from fleetgate.router.gateway import LocalLoad
from fleetgate.router.ingress import parse_inference_request
from fleetgate.router.routing.base import ResendingRouter, resends
from fleetgate.router.routing.registry import ROUTER_NAMES, make_router


def parse(body: object, api: str = "chat", headers: dict[str, str] | None = None):
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return parse_inference_request(raw, api, request_id="r1", arrival_s=1.0, headers=headers or {})


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("body", "api", "param"),
    [
        (b"{not json", "chat", None),
        ([1, 2], "chat", "body"),
        ({"messages": CHAT["messages"]}, "chat", "model"),
        ({"model": "m"}, "chat", "messages"),
        ({"model": "m", "messages": []}, "chat", "messages"),
        ({"model": "m", "messages": [{"content": "x"}]}, "chat", "messages[0]"),
        ({**CHAT, "stream": "yes"}, "chat", "stream"),
        ({**CHAT, "max_tokens": 0}, "chat", "max_tokens"),
        ({**CHAT, "temperature": "hot"}, "chat", "temperature"),
        ({"model": "m"}, "completions", "prompt"),
        ({"model": "m", "prompt": 5}, "completions", "prompt"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(body: object, api: str, param: str | None) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse(body, api)
    assert caught.value.status == 400
    assert caught.value.param == param


def test_good_bodies_keep_every_field_the_gateway_uses() -> None:
    chat = parse({**CHAT, "stream": True, "max_tokens": 7, "user": "u1", "tools": [{"type": "function"}]},
                 headers={"authorization": "Bearer k1"})
    assert (chat.stream, chat.max_tokens, chat.session_id, chat.tools) == (True, 7, "u1", ({"type": "function"},))
    assert chat.tenant.startswith("key-") and "k1" not in chat.tenant
    assert parse(CHAT, headers={"x-session-id": "s9"}).session_id == "s9"
    assert parse(CHAT).tenant == "default"
    completion = parse({"model": "m", "prompt": ["a", "b"]}, "completions")
    assert completion.prompt == "a\nb" and completion.messages is None


def test_errors_have_openai_shape_and_status() -> None:
    body = ModelNotFoundError("no such model", param="model").to_body()
    assert body == {"error": {"message": "no such model", "type": "invalid_request_error", "param": "model",
                              "code": "model_not_found"}}
    assert UpstreamTimeoutError("slow").status == 504


METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 640.0 1700000000
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 9.0
garbage line
"""


def test_scrape_sums_label_sets_and_ignores_other_series() -> None:
    load = parse_vllm_metrics(METRICS)
    assert (load.running, load.waiting, load.kv_usage_ratio) == (5, 4, 0.25)
    assert (load.prefix_queries_tokens, load.prefix_hits_tokens) == (1000.0, 640.0)
    assert parse_vllm_metrics("vllm:gpu_cache_usage_perc 0.5\n").kv_usage_ratio == 0.5


def sse(*events: object, done: bool = True) -> bytes:
    out = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
    return out + (b"data: [DONE]\n\n" if done else b"")


def delta(text: str, finish: str | None = None) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (sse(delta("Hel"), delta("lo", "stop")), ("Hello", "stop")),
        (sse(delta("Hel"), delta("lo", "stop"), done=False), None),  # cut before [DONE]
        (sse(delta("Hel")), None),  # no finish_reason
        (sse(delta("Hel"), {"error": {"message": "boom"}}), None),
    ],
)
def test_only_clean_streams_yield_cacheable_text(stream: bytes, expected: tuple[str, str] | None) -> None:
    assert completion_from_sse("chat", stream) == expected


def test_body_extraction_for_both_apis() -> None:
    chat = {"choices": [{"index": 0, "message": {"content": "hey"}, "finish_reason": "length"}]}
    assert completion_from_body("chat", orjson.dumps(chat)) == ("hey", "length")
    text = {"choices": [{"index": 0, "text": "abc", "finish_reason": "stop"}]}
    assert completion_from_body("completions", orjson.dumps(text)) == ("abc", "stop")
    assert completion_from_body("chat", b"{}") is None


def test_local_load_counts_an_attempt_from_start_to_end() -> None:
    local = LocalLoad()
    local.started("i0", 500)
    local.started("i0", 100)
    assert (local.inflight("i0"), local.queued_prefill_tokens("i0")) == (2, 600)
    local.prefilled("i0", 500)  # its first byte came
    assert (local.inflight("i0"), local.queued_prefill_tokens("i0")) == (2, 100)
    local.ended("i0")
    local.prefilled("i0", 100)  # ended without a first byte
    local.ended("i0")
    assert (local.inflight("i0"), local.queued_prefill_tokens("i0"), local.inflight("i1")) == (0, 0, 0)


@pytest.mark.parametrize("name", ROUTER_NAMES)
def test_only_dualmap_declares_it_can_resend(name: str) -> None:
    router = make_router(name)
    assert isinstance(router, ResendingRouter) == (name == "dualmap")
    assert resends(router) == (name == "dualmap") and resends(make_router(name)) == (name == "dualmap")
