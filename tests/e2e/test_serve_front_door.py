"""The front door end to end: a second Serve application (two gateway replicas, a keys file, a real
Redis for the rate limits, an admin token) beside deploy/serve.yaml's, driven by the openai client."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from pathlib import Path
from typing import Iterator

import aiohttp
import openai
import pytest
from support.gateway import MODEL
from support.redis_server import RedisServer

from fleetgate.app.cli import main

pytestmark = pytest.mark.e2e

ADMIN_TOKEN_ENV = "FLEETGATE_E2E_ADMIN_TOKEN"
# Ray's workers (the replicas) get the environment of the process that starts Ray, and the session's Ray
# starts after every test module is imported: so the replicas can read this token, as an operator's would.
os.environ.setdefault(ADMIN_TOKEN_ENV, secrets.token_urlsafe(24))
CHAT = [{"role": "user", "content": "Name a routing algorithm."}]
RPM = 4


@pytest.fixture(scope="module")
def front_door(serve_url: str, fleet,  # noqa: ANN001
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    from ray import serve

    from fleetgate.app.serve import build_app

    servers, _loop = fleet
    keys = tmp_path_factory.mktemp("keys") / "keys.yaml"
    issued = {name: _add(keys, *options) for name, options in {
        "limited": ("--tenant", "acme", "--rpm", str(RPM)),
        "tokens": ("--tenant", "beta", "--tpm", "1000"),
        "other_model": ("--tenant", "acme", "--models", "another-model"),
        "open": ("--tenant", "gamma"),
    }.items()}
    with RedisServer() as redis_server:
        app = build_app({"worker_urls": [s.url for s in servers], "model": MODEL, "router": "round-robin",
                         "num_replicas": 2, "keys": str(keys), "redis_url": redis_server.url,
                         "admin_token_env": ADMIN_TOKEN_ENV})
        serve.run(app, name="frontdoor", route_prefix="/frontdoor", blocking=False)
        try:
            yield {"url": serve_url + "/frontdoor", "redis": redis_server.url, **issued}
        finally:
            serve.delete("frontdoor")


def _add(path: Path, *options: str) -> str:
    from contextlib import redirect_stdout
    from io import StringIO

    out = StringIO()
    with redirect_stdout(out):
        assert main(["keys", "add", str(path), *options]) == 0
    return out.getvalue().splitlines()[-1]


def client(url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


async def test_two_replicas_refuse_bad_keys_with_401_and_other_models_with_403(front_door: dict[str, str]) -> None:
    from ray import serve

    deployment = serve.status().applications["frontdoor"].deployments["fleetgate"]
    assert deployment.replica_states.get("RUNNING") == 2
    url = front_door["url"]
    answer = await client(url, front_door["open"]).chat.completions.create(model=MODEL, messages=CHAT, max_tokens=3)
    assert answer.choices[0].message.content
    for bad in ("sk-unknown", front_door["open"][:-1] + "!"):
        with pytest.raises(openai.AuthenticationError) as refused:
            await client(url, bad).chat.completions.create(model=MODEL, messages=CHAT, max_tokens=3)
        assert refused.value.body["code"] == "invalid_api_key" and bad not in str(refused.value.body)
    with pytest.raises(openai.PermissionDeniedError):
        await client(url, front_door["other_model"]).chat.completions.create(model=MODEL, messages=CHAT, max_tokens=3)


async def test_a_keys_rpm_is_shared_by_both_replicas_through_redis(front_door: dict[str, str]) -> None:
    import redis.asyncio as redis

    gateway = client(front_door["url"], front_door["limited"])
    served, refused = 0, []
    for _ in range(2 * RPM):  # spread over both replicas by Serve: with a counter per replica more would pass
        try:
            await gateway.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2)
            served += 1
        except openai.RateLimitError as error:
            refused.append(error)
    assert served == RPM and len(refused) == RPM
    assert all(e.body["code"] == "rate_limit_exceeded" and e.body["type"] == "requests" for e in refused)
    assert all(1 <= int(e.response.headers["retry-after"]) <= 60 for e in refused)
    store = redis.Redis.from_url(front_door["redis"])
    try:
        names = [name async for name in store.scan_iter("fleetgate-limits*")]
    finally:
        await store.aclose()
    ident = front_door["limited"].split("-")[1]
    assert any(ident.encode() in name for name in names)
    assert not any(front_door["limited"].split("-", 2)[2].encode() in name for name in names)


async def test_tpm_is_charged_with_the_real_usage_and_usage_stays_out_of_streams_that_did_not_ask(
        front_door: dict[str, str]) -> None:
    stream = await client(front_door["url"], front_door["open"]).chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=20, stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks and all(chunk.usage is None for chunk in chunks)  # it did not ask for usage

    gateway = client(front_door["url"], front_door["tokens"])  # 1000 TPM
    with pytest.raises(openai.RateLimitError) as refused:
        await gateway.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=1001)
    assert refused.value.body["type"] == "tokens"
    used = (await gateway.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=600)).usage
    assert used is not None
    fits = 1000 - used.total_tokens - 2 * used.prompt_tokens - 10  # fits beside the real usage...
    assert fits + 600 > 1000  # ...but not beside the admission charge (prompt + 600): the answer stopped early
    await admitted_within(gateway, fits, timeout_s=10)


async def admitted_within(gateway: openai.AsyncOpenAI, max_tokens: int, timeout_s: float) -> None:
    """The request is served once the correction (run when the previous request ended) has landed;
    a refusal charges nothing, so asking again is safe."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await gateway.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=max_tokens)
            return
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "the TPM charge was not corrected with the real usage"
            await asyncio.sleep(0.1)


async def test_admin_endpoints_need_the_admin_token(front_door: dict[str, str]) -> None:
    url = front_door["url"] + "/admin/fleet"
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {front_door['open']}"}):
            async with session.get(url, headers=headers) as response:
                assert response.status == 401
        async with session.get(url, headers={"Authorization": f"Bearer {os.environ[ADMIN_TOKEN_ENV]}"}) as response:
            assert response.status == 200 and "pools" in await response.json()
