"""End to end through real Ray Serve (deploy/serve.yaml: two gateway replicas) with the official openai client."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import pytest
from support.gateway import MODEL

from fleetgate.app.settings import ServeCommandSettings

pytestmark = pytest.mark.e2e

CHAT = [{"role": "user", "content": "Name three routing algorithms."}]


async def test_the_deployment_is_the_one_deploy_serve_yaml_describes(serve_url: str,
                                                                     serve_settings: ServeCommandSettings) -> None:
    from ray import serve

    assert (serve_settings.router, serve_settings.num_replicas) == ("dualmap", 2)  # from the file
    deployment = serve.status().applications["fleetgate"].deployments["fleetgate"]
    assert deployment.replica_states.get("RUNNING") == serve_settings.num_replicas
    async with aiohttp.ClientSession() as client, client.get(serve_url + "/v1/models") as response:
        assert [model["id"] for model in (await response.json())["data"]] == [MODEL]


def test_replicas_and_proxy_run_at_the_default_priority(serve_url: str) -> None:
    """Ray would start them at nice 15, behind any CPU-bound neighbour (app/serve.py WORKER_NICENESS)."""
    import os

    from fleetgate.loadgen.proctree import process_tree

    gateway = [p for p in process_tree(os.getpid()) if p.title.startswith(("ray::ServeReplica", "ray::ProxyActor"))]
    assert len(gateway) >= 3, [p.title for p in gateway]  # two replicas and a proxy
    niceness = [(p.title, os.getpriority(os.PRIO_PROCESS, p.pid)) for p in gateway]
    assert all(nice == 0 for _, nice in niceness), niceness


async def test_openai_client_through_ray_serve(serve_url: str, fleet) -> None:  # noqa: ANN001
    servers, _loop = fleet
    gateway = openai.AsyncOpenAI(base_url=serve_url + "/v1", api_key="k", max_retries=0, timeout=60)
    direct = openai.AsyncOpenAI(base_url=servers[0].url + "/v1", api_key="k", max_retries=0, timeout=60)

    assert [m.id async for m in gateway.models.list()] == [MODEL]
    expected = (await direct.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=10)).choices[0]
    raw = await gateway.chat.completions.with_raw_response.create(model=MODEL, messages=CHAT, max_tokens=10)
    assert raw.parse().choices[0].message.content == expected.message.content
    assert raw.headers["x-fleetgate-route"].startswith(("affinity", "slo", "hotspot"))
    stream = await gateway.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=10, stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.message.content
    assert all(c.usage is None and c.choices for c in chunks)  # usage went to the gateway (asked upstream), not to us

    prompt = "The quick brown fox"
    expected_text = (await direct.completions.create(model=MODEL, prompt=prompt, max_tokens=7)).choices[0].text
    assert (await gateway.completions.create(model=MODEL, prompt=prompt, max_tokens=7)).choices[0].text == expected_text
    stream = await gateway.completions.create(model=MODEL, prompt=prompt, max_tokens=7, stream=True)
    assert "".join([c.choices[0].text async for c in stream]) == expected_text

    answers = await asyncio.gather(*(gateway.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"question {i}"}], max_tokens=3) for i in range(16)))
    assert all(a.usage.completion_tokens == 3 for a in answers)


async def test_client_disconnect_through_ray_serve_aborts_the_generation(serve_url: str, fleet) -> None:  # noqa: ANN001
    servers, _loop = fleet

    def running() -> int:
        return sum(s.stats().running for s in servers)

    body = {"model": MODEL, "messages": [{"role": "user", "content": "a long story please"}],
            "max_tokens": 3000, "stream": True}
    async with aiohttp.ClientSession() as session:
        response = await session.post(serve_url + "/v1/chat/completions", json=body)
        assert response.status == 200
        await response.content.readline()
        assert running() == 1
        response.close()
    deadline = time.monotonic() + 10
    while running() != 0:
        assert time.monotonic() < deadline, "the upstream generation was not aborted within 10 s"
        await asyncio.sleep(0.05)
