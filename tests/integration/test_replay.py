"""Replay against real loopback servers: the open-loop property, drops at the cap, error kinds, headers."""

from __future__ import annotations

import asyncio
import statistics

import pytest
from support.sse_target import run_sse_target

from loadgen.replay import ReplayConfig, Replayer, make_session, replay_trace, schedule
from loadgen.traces import TraceRequest

pytestmark = pytest.mark.integration


def _trace(count: int, rate_per_s: float, *, chat: bool = True, output_tokens: int = 3) -> list[TraceRequest]:
    messages = ({"role": "user", "content": "hello " * 20},)
    return [
        TraceRequest(i / rate_per_s, None if chat else "p" * 80, messages if chat else None, output_tokens, f"s{i % 3}", 30)
        for i in range(count)
    ]


async def _replay(url: str, requests: list[TraceRequest], **config) -> list:
    cfg = ReplayConfig(target=url, model=config.pop("model", "ok"), request_timeout_s=20.0, **config)
    async with make_session(cfg) as session:
        return await asyncio.wait_for(Replayer(cfg, session).run(schedule(requests, cfg)), timeout=30)


async def test_slow_target_does_not_delay_later_sends() -> None:
    """200 requests/s for 1.5 s while every answer takes 0.5 s: sends still follow the trace within 10 ms."""
    requests = _trace(300, 200.0)
    async with run_sse_target(delay_s=0.5) as target:
        results = await _replay(target.url, requests)
    assert [r.error for r in results] == [None] * 300
    lags_ms = [(r.sent_s - r.scheduled_s) * 1000 for r in results]
    assert max(lags_ms) < 10, f"worst send lag {max(lags_ms):.1f} ms"
    assert min(lags_ms) >= 0
    assert all(r.ttft_ms >= 500 for r in results)  # the target really was slow...
    # ...and the server received the requests at the trace's pace, about 100 in flight at once
    received = sorted(target.received_s)
    gaps_ms = [(b - a) * 1000 for a, b in zip(received, received[1:])]
    assert statistics.median(gaps_ms) == pytest.approx(5.0, abs=1.0)
    assert (received[-1] - received[0]) == pytest.approx(299 / 200, abs=0.05)


async def test_concurrency_cap_drops_and_counts() -> None:
    """Cap 5, answers after 1 s, 50 arrivals in 0.25 s: the first 5 go, the other 45 are dropped, not queued."""
    async with run_sse_target(delay_s=1.0) as target:
        results = await _replay(target.url, _trace(50, 200.0), concurrency_cap=5)
    assert [r.error for r in results[:5]] == [None] * 5
    assert [r.error for r in results[5:]] == ["dropped"] * 45
    assert all(r.sent_s is None and r.status == 0 for r in results[5:])
    assert len(target.received_s) == 5


async def test_measures_tokens_headers_and_session() -> None:
    async with run_sse_target(delay_s=0.05, chunks=3) as target:
        (result,) = await _replay(target.url, _trace(1, 1.0))
        body, headers = target.bodies[0], target.headers[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 3 and body["ignore_eos"] is True and body["messages"][0]["role"] == "user"
    assert headers["x-session-id"] == "s0"
    assert result.error is None and result.status == 200
    assert (result.prompt_tokens, result.completion_tokens, result.cached_tokens) == (40, 3, 24)
    assert (result.pool, result.instance, result.route) == ("small", "small-0", "dualmap")
    assert result.ttft_ms >= 50 and result.e2e_ms >= result.ttft_ms and result.tpot_ms is not None


@pytest.mark.parametrize(
    ("model", "error", "status"),
    [("http-503", "http_503", 503), ("stream-error", "stream_error", 200), ("cut", "disconnect", 200), ("json", None, 200)],
)
async def test_error_kinds(model: str, error: str | None, status: int) -> None:
    async with run_sse_target() as target:
        (result,) = await _replay(target.url, _trace(1, 1.0), model=model)
    assert (result.error, result.status) == (error, status)
    if error is None:
        assert result.completion_tokens == 3 and result.ttft_ms is not None


async def test_unreachable_target_is_a_connect_error() -> None:
    async with run_sse_target() as target:
        url = target.url
    (result,) = await _replay(url, _trace(1, 1.0))
    assert result.error == "connect" and result.sent_s is not None


async def test_completions_api_and_model_detection_and_stop() -> None:
    """Text prompts go to /v1/completions, the model comes from /v1/models, and a stop keeps what was sent."""
    async with run_sse_target(delay_s=2.0) as target:
        stop = asyncio.Event()
        config = ReplayConfig(target=target.url + "/v1", model="")
        asyncio.get_running_loop().call_later(0.3, stop.set)
        outcome = await asyncio.wait_for(replay_trace(_trace(40, 20.0, chat=False), config, progress=False, stop=stop), 10)
    assert outcome.model == "ok" and outcome.interrupted
    assert 3 <= len(outcome.results) <= 10  # only what was sent in the first 0.3 s
    assert {r.error for r in outcome.results} == {"interrupted"}
    assert "prompt" in target.bodies[0] and "messages" not in target.bodies[0]
