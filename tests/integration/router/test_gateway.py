"""The gateway (bare ASGI app on uvicorn) in front of real emulated vLLM servers, driven by the
official openai client: transparency, headers, errors, retries, ejection, disconnects."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import orjson
import pytest
from support.gateway import MODEL, emulators, eventually, gateway

from fleetgate.router.routing.base import RouteDecision
from fleetgate.router.routing.baselines import RoundRobin

pytestmark = pytest.mark.integration

CHAT = [{"role": "user", "content": "Write a haiku about routers."}]


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="test-key", max_retries=0, timeout=30)


async def streamed_chat(c: openai.AsyncOpenAI, **kwargs: object) -> str:
    stream = await c.chat.completions.create(model=MODEL, messages=CHAT, stream=True, max_tokens=12, **kwargs)
    return "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])


async def test_chat_and_completions_pass_through_unchanged() -> None:
    async with emulators(2) as servers, gateway([s.url for s in servers]) as url:
        via_gateway, direct = client(url), client(servers[0].url)
        chat = await via_gateway.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12)
        expected = (await direct.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12)).choices[0]
        assert chat.choices[0].message.content == expected.message.content and chat.usage.completion_tokens == 12
        assert await streamed_chat(via_gateway) == expected.message.content

        text = await via_gateway.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=9)
        direct_text = await direct.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=9)
        assert text.choices[0].text == direct_text.choices[0].text
        stream = await via_gateway.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=9,
                                                      stream=True)
        assert "".join([c.choices[0].text async for c in stream]) == direct_text.choices[0].text

        assert [m.id async for m in via_gateway.models.list()] == [MODEL]


async def test_headers_name_pool_instance_reason_and_keep_the_request_id() -> None:
    async with emulators(2) as servers, gateway([s.url for s in servers]) as url:
        raw = await client(url).chat.completions.with_raw_response.create(
            model=MODEL, messages=CHAT, max_tokens=2, extra_headers={"x-request-id": "req-42"})
        assert raw.headers["x-request-id"] == "req-42"
        assert raw.headers["x-fleetgate-pool"] == "default"
        assert raw.headers["x-fleetgate-instance"] in {"default-0", "default-1"}
        assert raw.headers["x-fleetgate-route"] == "rotation"
        async with aiohttp.ClientSession() as session:
            metrics = await (await session.get(url + "/metrics")).text()
        assert 'fleetgate_route_decisions_total{pool="default",reason="rotation",router="round-robin"}' in metrics
        assert "fleetgate_time_to_first_token_seconds_bucket" in metrics


async def test_bad_input_gets_openai_errors_never_a_500() -> None:
    async with emulators(1) as servers, gateway([s.url for s in servers], max_body_bytes=4096) as url:
        async with aiohttp.ClientSession() as session:
            malformed = await session.post(url + "/v1/chat/completions", data=b'{"model": ')
            assert malformed.status == 400
            assert (await malformed.json())["error"]["type"] == "invalid_request_error"
            missing = await session.post(url + "/v1/chat/completions", json={"model": MODEL})
            assert missing.status == 400 and (await missing.json())["error"]["param"] == "messages"
        c = client(url)
        with pytest.raises(openai.NotFoundError) as unknown:
            await c.chat.completions.create(model="no-such-model", messages=CHAT)
        assert "tiny-llama" in unknown.value.message
        with pytest.raises(openai.APIStatusError) as too_big:
            await c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * 5000}])
        assert too_big.value.status_code == 413
        with pytest.raises(openai.BadRequestError):  # over the instance's context: vLLM's 400 passes through
            await c.completions.create(model=MODEL, prompt="word " * 800, max_tokens=40_000)


async def test_no_healthy_instance_is_503() -> None:
    async with gateway(["http://127.0.0.1:9"]) as url:
        with pytest.raises(openai.InternalServerError) as caught:
            await client(url).chat.completions.create(model=MODEL, messages=CHAT)
        assert caught.value.status_code == 503


async def set_fault(url: str, mode: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/admin/fault", data=orjson.dumps({"mode": mode})) as response:
            assert response.status == 200


@pytest.mark.parametrize("mode", ["503", "hang"])
async def test_failing_instance_is_retried_on_the_other_before_the_first_byte(mode: str) -> None:
    async with emulators(2) as servers, gateway([s.url for s in servers], first_byte_timeout_s=0.5,
                                                 nonstream_timeout_s=0.5, probe_interval_s=30) as url:
        await set_fault(servers[0].url, mode)
        c = client(url)
        results = await asyncio.gather(*(c.chat.completions.with_raw_response.create(
            model=MODEL, messages=CHAT, max_tokens=3, stream=stream) for stream in (False, True, False, True)))
        assert {r.headers["x-fleetgate-instance"] for r in results} == {"default-1"}
        assert any(r.headers["x-fleetgate-route"].endswith("+retry") for r in results)


async def test_killed_instance_is_ejected_requests_succeed_and_it_comes_back() -> None:
    async with emulators(1) as survivor, emulators(1) as doomed:
        port = int(doomed[0].url.rsplit(":", 1)[1])
        async with gateway([doomed[0].url, survivor[0].url], probe_interval_s=0.2) as url:
            await doomed[0].stop()
            c = client(url)
            answers = await asyncio.gather(*(c.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2)
                                             for _ in range(6)))
            assert len(answers) == 6  # none failed: refused connections were retried on the survivor
            async with aiohttp.ClientSession() as session:
                async def healthy() -> int:
                    return (await (await session.get(url + "/health")).json())["healthy_instances"]

                assert await healthy() == 1
                await doomed[0].start(port=port)  # recovered: re-admitted by the next probes
                deadline = asyncio.get_running_loop().time() + 2.5
                while await healthy() != 2:
                    assert asyncio.get_running_loop().time() < deadline, "not re-admitted within 2.5 s"
                    await asyncio.sleep(0.05)


async def test_backend_dying_mid_stream_ends_with_an_sse_error() -> None:
    async with emulators(1, time_scale=0.2) as servers, gateway([s.url for s in servers]) as url:
        body = {"model": MODEL, "messages": CHAT, "max_tokens": 500, "stream": True}
        async with aiohttp.ClientSession() as session:
            async with session.post(url + "/v1/chat/completions", json=body) as response:
                assert response.status == 200
                await response.content.readline()
                await set_fault(servers[0].url, "reset")
                rest = await response.read()
        assert b'"error"' in rest and rest.endswith(b"data: [DONE]\n\n")


async def test_client_disconnect_aborts_the_upstream_generation() -> None:
    async with emulators(1, time_scale=0.2) as servers, gateway([s.url for s in servers]) as url:
        engine_server = servers[0]
        for stream in (True, False):
            body = {"model": MODEL, "messages": CHAT, "max_tokens": 2000, "stream": stream}
            async with aiohttp.ClientSession() as session:
                request = asyncio.ensure_future(session.post(url + "/v1/chat/completions", json=body))
                await eventually(lambda: engine_server.stats().running == 1, what="generation started")
                if stream:
                    response = await request
                    await response.content.readline()
                    response.close()
                else:
                    request.cancel()
            await eventually(lambda: engine_server.stats().running == 0, what=f"abort (stream={stream})")


class ResendOnce(RoundRobin):
    """Round-robin that, like DualMap's hotspot rule, moves a still-queued request to the other
    instance once (the rule itself is unit-tested with DualMap; here the gateway's side is)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def resend(self, request, current, instances, now_s):  # noqa: ANN001, ANN201
        self.asked.append(current.name)
        if len(self.asked) > 1:
            return None
        other = next(v for v in instances if v.name != current.name)
        return RouteDecision((other.endpoint,), "resend")


async def test_a_queued_stream_is_cancelled_and_resent_to_the_other_candidate() -> None:
    router = ResendOnce()
    long_prompt = [{"role": "user", "content": "lorem ipsum " * 6000}]  # ~18k tokens: ~0.6 s of H100 prefill
    async with emulators(2, time_scale=1.0) as servers, gateway(
            [s.url for s in servers], router_factory=lambda _name, **_: router, resend_check_s=0.05,
            probe_interval_s=30) as url:
        raw = await client(url).chat.completions.with_raw_response.create(
            model=MODEL, messages=long_prompt, max_tokens=3, stream=True)
        assert raw.headers["x-fleetgate-instance"] == "default-1" and raw.headers["x-fleetgate-route"] == "resend"
        assert "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
        assert router.asked[0] == "default-0" and set(router.asked[1:]) == {"default-1"}  # asked again there, said no
        first = servers[0].stats()
        assert first.running + first.waiting == 0 and first.generation_tokens_total == 0, \
            "the copy at the first instance was cancelled before its first token"
        assert servers[1].stats().generation_tokens_total == 3
