"""The front door on the bare gateway with the official openai client: keys (401, 403), rate limits
shared by two gateways through a real redis-server (429 with Retry-After), Redis outages (fail
open), TPM corrected with the real usage, backend credentials, and keys kept out of logs, metrics,
Redis and error bodies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import AsyncIterator, Iterator

import aiohttp
import openai
import pytest
import redis.asyncio as redis
from aiohttp import web
from support.gateway import MODEL, emulators, gateway
from support.redis_server import RedisServer
from support.servers import serve_aiohttp

from fleetgate.app.cli import main

pytestmark = pytest.mark.integration

CHAT = [{"role": "user", "content": "Say hello."}]


def new_key(path: Path, capsys: pytest.CaptureFixture[str], *options: str) -> str:
    assert main(["keys", "add", str(path), *options]) == 0
    return capsys.readouterr().out.splitlines()[-1]


def client(url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


async def chat(url: str, key: str, model: str = MODEL, max_tokens: int = 2) -> openai.types.chat.ChatCompletion:
    return await client(url, key).chat.completions.create(model=model, messages=CHAT, max_tokens=max_tokens)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


async def test_keys_decide_who_may_call_and_which_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys.yaml"
    good = new_key(keys, capsys, "--tenant", "acme", "--priority", "high")
    other_model = new_key(keys, capsys, "--tenant", "acme", "--models", "another-model")
    revoked = new_key(keys, capsys, "--tenant", "acme")
    assert main(["keys", "revoke", str(keys), revoked.split("-")[1]]) == 0
    async with emulators(1) as servers, gateway([s.url for s in servers], keys=str(keys)) as url:
        assert (await chat(url, good)).choices[0].message.content
        for bad in ("sk-not-ours", good[:-2] + "xy", revoked):
            with pytest.raises(openai.AuthenticationError) as refused:
                await chat(url, bad)
            body = refused.value.body
            assert refused.value.status_code == 401 and body["code"] == "invalid_api_key"
            assert bad not in str(body)
        async with aiohttp.ClientSession() as session:
            missing = await session.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": CHAT})
            assert missing.status == 401 and (await missing.json())["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.PermissionDeniedError):
            await chat(url, other_model)
        assert [m.id async for m in client(url, good).models.list()] == [MODEL]
        assert [m.id async for m in client(url, other_model).models.list()] == []
        with pytest.raises(openai.AuthenticationError):
            await client(url, "nope").models.list()


async def test_an_rpm_limit_is_shared_by_two_gateways_on_one_redis_and_redis_never_sees_a_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], redis_server: RedisServer) -> None:
    keys = tmp_path / "keys.yaml"
    key = new_key(keys, capsys, "--tenant", "acme", "--rpm", "3")
    other = new_key(keys, capsys, "--tenant", "beta", "--rpm", "3")
    async with emulators(1) as servers, \
            gateway([s.url for s in servers], keys=str(keys), redis_url=redis_server.url) as first, \
            gateway([s.url for s in servers], keys=str(keys), redis_url=redis_server.url) as second:
        await chat(first, key)
        await chat(second, key)
        await chat(first, key)
        with pytest.raises(openai.RateLimitError) as refused:
            await chat(second, key)
        error = refused.value
        assert error.body["code"] == "rate_limit_exceeded" and error.body["type"] == "requests"
        assert 1 <= int(error.response.headers["retry-after"]) <= 60
        await chat(second, other)  # another key's budget is its own
        store = redis.Redis.from_url(redis_server.url)
        try:
            stored = [name + (await store.get(name) or b"") async for name in store.scan_iter("*")]
        finally:
            await store.aclose()
        assert stored and all(b"fleetgate-limits" in entry for entry in stored)
        for secret in (key, other):
            assert not any(secret.split("-", 2)[2].encode() in entry for entry in stored)


async def test_when_redis_is_down_limits_fail_open_count_it_and_log_it_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    keys = tmp_path / "keys.yaml"
    key = new_key(keys, capsys, "--tenant", "acme", "--rpm", "1")
    with RedisServer() as server:
        async with emulators(1) as servers, \
                gateway([s.url for s in servers], keys=str(keys), redis_url=server.url) as url:
            await chat(url, key)
            with pytest.raises(openai.RateLimitError):
                await chat(url, key)
            server.stop()
            with caplog.at_level(logging.WARNING, logger="fleetgate.ratelimit"):
                for _ in range(3):
                    assert (await chat(url, key)).choices  # served: never lost to a limiter outage
            failed = [r for r in caplog.records if "rate-limit storage failed" in r.getMessage()]
            assert len(failed) == 1
            async with aiohttp.ClientSession() as session:
                metrics = await (await session.get(url + "/metrics")).text()
            assert _sample(metrics, "fleetgate_ratelimit_errors_total") >= 3
            server.start()
            with caplog.at_level(logging.WARNING, logger="fleetgate.ratelimit"):
                await _until_refused(url, key)  # enforced again once Redis answers
            assert any("answers again" in r.getMessage() for r in caplog.records)


async def _until_refused(url: str, key: str, attempts: int = 5) -> None:
    for _ in range(attempts):
        try:
            await chat(url, key)
        except openai.RateLimitError:
            return
    raise AssertionError(f"no 429 within {attempts} requests once Redis was back")


def _sample(metrics: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name + " "))


async def test_tpm_is_corrected_with_the_real_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys.yaml"
    key = new_key(keys, capsys, "--tenant", "acme", "--tpm", "1000")
    async with emulators(1) as servers, gateway([s.url for s in servers], keys=str(keys)) as url:
        with pytest.raises(openai.RateLimitError) as refused:
            await chat(url, key, max_tokens=1001)  # charged at admission: prompt + max_tokens
        assert refused.value.body["type"] == "tokens"
        used = (await chat(url, key, max_tokens=600)).usage  # charged prompt + 600; the answer stops earlier
        assert used is not None
        fits = 1000 - used.total_tokens - 2 * used.prompt_tokens - 10  # fits beside the real usage...
        assert fits + 600 > 1000  # ...but not beside the admission charge
        # the correction runs when the first request ends; a refusal charges nothing, so asking again is safe
        await _admitted_within(url, key, max_tokens=fits)


async def _admitted_within(url: str, key: str, max_tokens: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await chat(url, key, max_tokens=max_tokens)
            return
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "the TPM charge was not corrected with the real usage"
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def recording_instance(seen: list[dict[str, str]]) -> AsyncIterator[str]:
    """A minimal OpenAI backend that records the headers of each inference request it gets."""
    async def complete(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        body = await request.json()
        return web.json_response({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}})

    async def empty(_request: web.Request) -> web.Response:
        return web.Response(text="")

    app = web.Application()
    app.router.add_get("/health", empty)
    app.router.add_get("/metrics", empty)
    app.router.add_post("/v1/chat/completions", complete)
    async with serve_aiohttp(app) as url:
        yield url


async def test_pools_send_their_own_key_upstream_never_the_clients_unless_they_opt_in(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("SECURED_POOL_KEY", "backend-secret-123")
    keys = tmp_path / "keys.yaml"
    key = new_key(keys, capsys, "--tenant", "acme")
    seen: dict[str, list[dict[str, str]]] = {"secured": [], "plain": [], "passthrough": []}
    async with recording_instance(seen["secured"]) as secured, recording_instance(seen["plain"]) as plain, \
            recording_instance(seen["passthrough"]) as passthrough:
        fleet = tmp_path / "fleet.yaml"
        fleet.write_text(f"""pools:
  - {{name: secured, model: m-secured, api_key_env: SECURED_POOL_KEY, instances: [{{url: "{secured}"}}]}}
  - {{name: plain, model: m-plain, instances: [{{url: "{plain}"}}]}}
  - {{name: passthrough, model: m-pass, forward_client_key: true, instances: [{{url: "{passthrough}"}}]}}
""")
        with caplog.at_level(logging.DEBUG):
            async with gateway([], fleet=str(fleet), worker_urls=(), model=None, keys=str(keys)) as url:
                for model in ("m-secured", "m-plain", "m-pass"):
                    await chat(url, key, model=model)
                with pytest.raises(openai.AuthenticationError) as refused:
                    await chat(url, key[:-1] + "Q")
                async with aiohttp.ClientSession() as session:
                    metrics = await (await session.get(url + "/metrics")).text()
    assert seen["secured"][0]["Authorization"] == "Bearer backend-secret-123"
    assert "Authorization" not in seen["plain"][0]
    assert seen["passthrough"][0]["Authorization"] == f"Bearer {key}"
    secret = key.split("-", 2)[2]
    for text in (caplog.text, metrics, str(refused.value.body)):
        assert secret not in text and secret[:-1] not in text and "backend-secret-123" not in text
