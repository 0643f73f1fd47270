"""Usage accounting through the bare gateway, in front of a real emulated vLLM, with the official openai
client: the gateway always asks the backend for usage, yet a client that did not ask gets exactly the
bytes the backend would have sent it; counters and usage listeners get the backend's real numbers."""

from __future__ import annotations

import contextlib
import re
from typing import Any, AsyncIterator

import aiohttp
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.gateway import MODEL, emulators
from support.servers import serve_asgi

from fleetgate.app.api import create_app
from fleetgate.app.compose import Runtime
from fleetgate.app.settings import GatewaySettings
from fleetgate.core.request import InferenceRequest
from fleetgate.core.usage import Usage
from fleetgate.router.routing.registry import make_router

pytestmark = pytest.mark.integration

CHAT = [{"role": "user", "content": "Count the tokens of this sentence, please. " * 4}]  # a few KV blocks long
LABELS = {"tenant": "anonymous", "model": MODEL, "pool": "default"}
Call = tuple[str, str, Usage]


@contextlib.asynccontextmanager
async def gateway_with_listener(urls: list[str]) -> AsyncIterator[tuple[str, list[Call]]]:
    """The bare gateway (as support.gateway builds it) with a usage listener recording every call."""
    runtime = Runtime(GatewaySettings(worker_urls=urls, model=MODEL, router="round-robin", probe_interval_s=0.2),
                      make_router)
    calls: list[Call] = []

    def listener(request: InferenceRequest, pool: str, usage: Usage) -> None:
        calls.append((request.request_id, pool, usage))

    runtime.gateway.add_usage_listener(listener)
    async with serve_asgi(create_app(runtime)) as url:
        yield url, calls


def body(api: str, **extra: Any) -> dict[str, Any]:
    prompt = {"messages": CHAT} if api == "chat" else {"prompt": "Once upon a time, " * 8}  # a few KV blocks long
    return {"model": MODEL, **prompt, "max_tokens": 12, "ignore_eos": True, **extra}


async def post(session: aiohttp.ClientSession, base: str, api: str, payload: dict[str, Any], request_id: str) -> bytes:
    path = "/v1/chat/completions" if api == "chat" else "/v1/completions"
    async with session.post(base + path, json=payload, headers={"X-Request-Id": request_id}) as response:
        assert response.status == 200
        return await response.read()


def same_second(a: bytes, b: bytes) -> tuple[bytes, bytes]:
    """Both streams with `created` (the backend's wall-clock second, the only thing the gateway cannot
    make equal between two requests) set to the first one's."""
    created = re.search(rb'"created":(\d+)', a)
    assert created is not None
    return a, re.sub(rb'"created":\d+', b'"created":' + created.group(1), b)


async def counters(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    text = await (await session.get(url + "/metrics")).text()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_tokens_total") and sample.labels == LABELS:
                found[sample.name] = sample.value
    return found


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_a_stream_without_include_usage_is_byte_identical_and_still_counted(api: str) -> None:
    async with emulators(1) as servers, gateway_with_listener([servers[0].url]) as (url, calls):
        async with aiohttp.ClientSession() as session:
            plain = body(api, stream=True)
            direct = await post(session, servers[0].url, api, plain, "same-id")
            asked = await post(session, servers[0].url, api, body(api, stream=True, stream_options={"include_usage": True}),
                               "other-id")
            via_gateway = await post(session, url, api, plain, "same-id")

            assert b'"usage"' not in direct and b'"usage"' in asked  # the emulator answers as vLLM does
            assert b"system_fingerprint" in direct  # ... and so moves the fingerprint the gateway must move back
            assert via_gateway.count(b"data: ") == direct.count(b"data: ") >= 3
            assert via_gateway == same_second(via_gateway, direct)[1]

            [(request_id, pool, usage)] = calls  # the backend reported usage although the client never saw it
            reported = Usage.from_openai(orjson.loads(asked.split(b"data: ")[-2])["usage"])
            assert reported is not None
            assert (request_id, pool) == ("same-id", "default")
            assert (usage.prompt_tokens, usage.completion_tokens) == (reported.prompt_tokens, 12)
            assert usage.cached_tokens > 0  # the same prompt twice before: a real report, not an estimate
            assert await counters(session, url) == {
                "fleetgate_prompt_tokens_total": usage.prompt_tokens,
                "fleetgate_cached_tokens_total": usage.cached_tokens,
                "fleetgate_completion_tokens_total": 12,
            }


async def test_the_openai_client_gets_usage_only_when_it_asks() -> None:
    async with emulators(1) as servers, gateway_with_listener([servers[0].url]) as (url, calls):
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="test-key", max_retries=0, timeout=30)
        quiet = [c async for c in await client.chat.completions.create(
            model=MODEL, messages=CHAT, max_tokens=12, stream=True)]
        assert all(c.usage is None and c.choices for c in quiet)

        loud = [c async for c in await client.chat.completions.create(
            model=MODEL, messages=CHAT, max_tokens=12, stream=True, stream_options={"include_usage": True})]
        assert loud[-1].choices == [] and loud[-1].usage is not None
        assert all(c.usage is None for c in loud[:-1])
        whole = await client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12)
        assert whole.usage is not None

        assert len(calls) == 3
        for (_, _, usage), seen in zip(calls[1:], (loud[-1].usage, whole.usage)):
            details = seen.prompt_tokens_details
            assert details is not None
            assert usage == Usage(seen.prompt_tokens, seen.completion_tokens, details.cached_tokens or 0)
        async with aiohttp.ClientSession() as session:
            totals = await counters(session, url)
        assert totals["fleetgate_completion_tokens_total"] == sum(u.completion_tokens for _, _, u in calls)
        assert totals["fleetgate_prompt_tokens_total"] == sum(u.prompt_tokens for _, _, u in calls)


async def test_a_stream_the_backend_cuts_is_accounted_once_with_what_is_known() -> None:
    async with emulators(1) as servers, gateway_with_listener([servers[0].url]) as (url, calls):
        async with aiohttp.ClientSession() as session:
            await session.post(servers[0].url + "/admin/fault", json={"mode": "reset"})
            cut = await post(session, url, "chat", body("chat", stream=True), "cut-id")
        assert b'"error"' in cut and cut.endswith(b"data: [DONE]\n\n")
        [(request_id, _, usage)] = calls
        assert request_id == "cut-id"
        assert usage.prompt_tokens > 0 and usage.cached_tokens == 0 and usage.completion_tokens < 12
