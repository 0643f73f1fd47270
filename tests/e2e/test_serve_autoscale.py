"""Ray Serve autoscaling of the gateway (max_replicas: Serve's autoscaling_config on ongoing requests)
under a bounded burst of streams, and the graceful drain of a replica being replaced.

A second application on the session's Ray (route prefix /autoscale), in front of one slow emulated
instance (streams of a few seconds, so they are "ongoing" long enough to be counted). Judged by
the replica counts Serve reports and by whole streams, within bounded waits."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Iterator

import openai
import pytest
from support.gateway import MODEL, emulators
from support.servers import in_thread

pytestmark = [pytest.mark.e2e,  # a 2 s look-back (quick test) is below Ray's deprecated 10 s metrics_interval_s
              pytest.mark.filterwarnings("ignore:`look_back_period_s`:FutureWarning")]

APP, PREFIX = "fleetgate-autoscale", "/autoscale"
CHAT = [{"role": "user", "content": "Tell me a long story."}]


@pytest.fixture(scope="module")
def slow_instance() -> Iterator[str]:
    with in_thread(lambda: emulators(1, time_scale=1.0)) as (servers, _loop):
        yield servers[0].url


@pytest.fixture(scope="module")
def autoscaled(serve_url: str, slow_instance: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The gateway autoscaled between 1 and 2 replicas (serve_url: the session's Ray Serve is up)."""
    from ray import serve

    from fleetgate.app.serve import build_app

    args = {"worker_urls": [slow_instance], "model": MODEL, "router": "round-robin", "num_replicas": 1,
            "max_replicas": 2, "target_ongoing_requests": 2, "upscale_delay_s": 0, "downscale_delay_s": 2,
            "autoscaling_look_back_s": 2, "graceful_shutdown_timeout_s": 30}
    serve.run(build_app(args), name=APP, route_prefix=PREFIX)
    try:
        yield serve_url + PREFIX, args
    finally:
        serve.delete(APP)


def replica_states() -> dict[str, int]:
    from ray import serve

    return dict(serve.status().applications[APP].deployments["fleetgate"].replica_states)


def running_replicas() -> int:
    return replica_states().get("RUNNING", 0)


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


async def stream_text(api: openai.AsyncOpenAI, max_tokens: int) -> str:
    stream = await api.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=max_tokens, stream=True)
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


async def test_the_gateway_scales_up_under_a_burst_and_back_down(autoscaled: tuple[str, dict[str, Any]]) -> None:
    url, _ = autoscaled
    api = client(url)
    counts = [running_replicas()]

    def observe() -> None:
        if (count := running_replicas()) != counts[-1]:
            counts.append(count)

    assert counts == [1]
    deadline = time.monotonic() + 90
    waves = 0
    while counts[-1] < 2:  # waves of 6 concurrent streams (3x the target per replica) until a replica is added
        assert time.monotonic() < deadline and waves < 30, f"no scale-up within the burst: {counts}"
        burst = asyncio.gather(*(stream_text(api, 200) for _ in range(6)))
        while not burst.done():
            observe()
            await asyncio.sleep(0.2)
        assert all(await burst)
        waves += 1
        observe()
    deadline = time.monotonic() + 90
    while counts[-1] > 1:  # idle now: back to num_replicas
        assert time.monotonic() < deadline, f"no scale-down within 90 s of the burst: {counts}"
        await asyncio.sleep(0.2)
        observe()
    assert counts == [1, 2, 1]


async def test_a_stream_on_a_replica_being_replaced_finishes(autoscaled: tuple[str, dict[str, Any]],
                                                             slow_instance: str) -> None:
    from ray import serve

    from fleetgate.app.serve import build_app

    url, args = autoscaled
    api = client(url)
    long_answer: dict[str, Any] = {"model": MODEL, "messages": CHAT, "max_tokens": 400,
                                   "extra_body": {"ignore_eos": True}}
    raw = await api.chat.completions.with_raw_response.create(**long_answer, stream=True)
    replica = raw.headers["x-fleetgate-replica"]
    chunks = raw.parse().__aiter__()
    first = await chunks.__anext__()

    # New settings: Serve starts a new replica, then drains and stops the one streaming to us.
    redeploy = asyncio.create_task(asyncio.to_thread(
        serve.run, build_app({**args, "probe_interval_s": 0.4}), name=APP, route_prefix=PREFIX))
    deadline = time.monotonic() + 60
    while replica_states().get("STOPPING", 0) == 0:  # draining began while our stream is in flight
        assert time.monotonic() < deadline and not redeploy.done(), f"no replica drained: {replica_states()}"
        await asyncio.sleep(0.1)
    rest = [chunk async for chunk in chunks]
    await asyncio.wait_for(redeploy, 120)

    text = "".join(c.choices[0].delta.content or "" for c in [first, *rest] if c.choices)
    expected = await client(slow_instance).chat.completions.create(**long_answer)
    assert text == expected.choices[0].message.content
    assert rest[-1].choices[0].finish_reason == "length"
    served_by = set()
    for _ in range(4):
        answer = await api.chat.completions.with_raw_response.create(model=MODEL, messages=CHAT, max_tokens=1)
        served_by.add(answer.headers["x-fleetgate-replica"])
    assert replica not in served_by  # the replica that streamed to us was replaced while it did
