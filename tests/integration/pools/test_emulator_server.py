"""The emulated vLLM server through the official openai client, on real loopback sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from typing import AsyncIterator, Awaitable, Callable

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from fleetgate.core.tokens import count_tokens
from fleetgate.pools.emulator.local import run_emulated_fleet
from fleetgate.pools.emulator.server import EmulatorServer
from fleetgate.pools.profiles import H100_80GB, L4_24GB

pytestmark = pytest.mark.integration

MODEL = "llama-3.1-8b"
METRIC_LINE = re.compile(r"^(vllm:[a-z_:]+)\{[^}]*\} (\S+)$", re.M)

ServerFactory = Callable[..., Awaitable[EmulatorServer]]


@pytest.fixture
async def start_server() -> AsyncIterator[ServerFactory]:
    servers: list[EmulatorServer] = []

    async def start(profile=H100_80GB, *, time_scale: float = 0.1, **options) -> EmulatorServer:
        server = EmulatorServer(profile, MODEL, time_scale=time_scale, **options)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


def client(server: EmulatorServer) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


async def metrics(server: EmulatorServer) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(server.url + "/metrics") as response:
        assert response.status == 200
        return {name: float(value) for name, value in METRIC_LINE.findall(await response.text())}


async def poll_metrics(server: EmulatorServer, condition: Callable[[dict[str, float]], bool], timeout_s: float = 5.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        values = await metrics(server)
        if condition(values):
            return values
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s: {values}")
        await asyncio.sleep(0.02)


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]


async def test_chat_streamed_text_equals_non_streamed(start_server: ServerFactory) -> None:
    server = await start_server()
    api = client(server)
    whole = await api.chat.completions.create(model=MODEL, messages=chat("hello there"), max_tokens=12)
    stream = await api.chat.completions.create(
        model=MODEL, messages=chat("hello there"), max_tokens=12, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert streamed == whole.choices[0].message.content and count_tokens(streamed) == 12
    assert whole.choices[0].finish_reason == "length"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert whole.usage.completion_tokens == chunks[-1].usage.completion_tokens == 12
    assert whole.usage.prompt_tokens == chunks[-1].usage.prompt_tokens > 0
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 12
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens >= 0


async def test_completions_streamed_text_equals_non_streamed(start_server: ServerFactory) -> None:
    server = await start_server()
    api = client(server)
    prompt = "Once upon a time " * 20
    whole = await api.completions.create(model=MODEL, prompt=prompt, max_tokens=9)
    stream = await api.completions.create(model=MODEL, prompt=prompt, max_tokens=9, stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert all(c.usage is None for c in chunks)  # no usage chunk unless include_usage
    assert whole.usage.prompt_tokens == count_tokens(prompt) and whole.usage.completion_tokens == 9
    seeded = [await api.completions.create(model=MODEL, prompt=prompt, max_tokens=9, seed=7) for _ in range(2)]
    assert seeded[0].choices[0].text == seeded[1].choices[0].text != whole.choices[0].text


async def test_repeated_long_prompt_hits_the_prefix_cache(start_server: ServerFactory) -> None:
    server = await start_server(L4_24GB, time_scale=0.25)  # L4: a 4k prefill takes ~1.2 emulated seconds
    api = client(server)
    messages = chat("Summarise this document. " + "The quick brown fox jumps over the lazy dog. " * 360)

    async def ttft_s() -> tuple[float, int, int]:
        started = time.perf_counter()
        stream = await api.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=4, stream=True, stream_options={"include_usage": True}
        )
        first = None
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
            if chunk.usage is not None:
                usage = chunk.usage
        assert first is not None
        return first, usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens

    before = await metrics(server)
    cold_s, prompt_tokens, cold_cached = await ttft_s()
    middle = await metrics(server)
    warm_s, _, warm_cached = await ttft_s()
    after = await metrics(server)
    assert prompt_tokens >= 4000
    assert cold_cached == 0 and warm_cached >= prompt_tokens - 32
    assert warm_s < cold_s / 3, (cold_s, warm_s)
    assert middle["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"] == 0
    assert after["vllm:prefix_cache_hits_total"] - middle["vllm:prefix_cache_hits_total"] == warm_cached
    assert after["vllm:prefix_cache_queries_total"] - middle["vllm:prefix_cache_queries_total"] == prompt_tokens


async def test_burst_over_max_num_seqs_queues(start_server: ServerFactory) -> None:
    server = await start_server(dataclasses.replace(H100_80GB, max_num_seqs=4), time_scale=0.2)
    api = client(server)
    tasks = [
        asyncio.create_task(api.completions.create(model=MODEL, prompt=f"request {i} " * 30, max_tokens=400))
        for i in range(10)
    ]
    try:
        loaded = await poll_metrics(server, lambda m: m["vllm:num_requests_waiting"] > 0)
        assert 0 < loaded["vllm:num_requests_running"] <= 4  # a finished seat is refilled on the next step
        assert 0 < loaded["vllm:kv_cache_usage_perc"] < 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    idle = await poll_metrics(server, lambda m: m["vllm:num_requests_running"] == m["vllm:num_requests_waiting"] == 0)
    assert idle["vllm:kv_cache_usage_perc"] == 0


async def test_disconnect_mid_stream_frees_the_request(start_server: ServerFactory) -> None:
    server = await start_server(time_scale=1.0)
    api = client(server)
    stream = await api.chat.completions.create(model=MODEL, messages=chat("go on"), max_tokens=3000, stream=True)
    received = 0
    async for _chunk in stream:
        received += 1
        if received == 5:
            break
    assert (await metrics(server))["vllm:num_requests_running"] == 1
    await stream.close()
    idle = await poll_metrics(server, lambda m: m["vllm:num_requests_running"] == 0)
    assert idle["vllm:kv_cache_usage_perc"] == 0


async def test_disconnect_while_waiting_for_a_whole_answer_aborts(start_server: ServerFactory) -> None:
    server = await start_server(time_scale=1.0)
    api = client(server)
    with pytest.raises((asyncio.TimeoutError, openai.APITimeoutError)):
        await asyncio.wait_for(api.completions.create(model=MODEL, prompt="long answer", max_tokens=3000), timeout=0.3)
    await poll_metrics(server, lambda m: m["vllm:num_requests_running"] == 0)


async def test_context_limit_refuses_long_prompts_and_cuts_long_answers(start_server: ServerFactory) -> None:
    server = await start_server(max_model_len=2048)
    api = client(server)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 2048"):
        await api.chat.completions.create(model=MODEL, messages=chat("word " * 2000), max_tokens=10)
    with pytest.raises(openai.BadRequestError, match="cannot be greater than max_model_len=2048"):
        await api.completions.create(model=MODEL, prompt="abcd", max_tokens=3000)
    cut = await api.completions.create(model=MODEL, prompt="abcd" * 2000, max_tokens=100, extra_body={"ignore_eos": True})
    assert (cut.usage.prompt_tokens, cut.usage.completion_tokens, cut.choices[0].finish_reason) == (2000, 48, "length")
    with pytest.raises(openai.NotFoundError):
        await api.completions.create(model="other-model", prompt="hi", max_tokens=1)


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/v1/chat/completions", b"{not json", "Invalid JSON"),
        ("/v1/chat/completions", b'{"model": "llama-3.1-8b"}', "messages"),
        ("/v1/completions", b'{"model": "llama-3.1-8b", "max_tokens": 0, "prompt": "x"}', "max_tokens"),
        ("/v1/completions", b"[1, 2]", "JSON object"),
        ("/v1/responses", b'{"model": "llama-3.1-8b", "input": []}', "input"),  # was a 500
    ],
)
async def test_malformed_requests_get_vllm_style_400(start_server: ServerFactory, path: str, body: bytes, needle: str) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as session, session.post(server.url + path, data=body) as response:
        payload = await response.json()
    assert response.status == 400
    error = payload["error"]
    assert error["type"] == "BadRequestError" and error["code"] == 400
    assert needle in error["message"]


async def test_models_health_and_fault_knob(start_server: ServerFactory) -> None:
    server = await start_server()
    api = client(server)
    models = await api.models.list()
    assert [m.id for m in models.data] == [MODEL]
    async with aiohttp.ClientSession() as session:
        assert (await session.get(server.url + "/health")).status == 200
        await session.post(server.url + "/admin/fault", json={"mode": "503"})
        assert (await session.get(server.url + "/health")).status == 503
        with pytest.raises(openai.APIStatusError) as failure:
            await api.completions.create(model=MODEL, prompt="hi", max_tokens=1)
        assert failure.value.status_code == 503
        await session.post(server.url + "/admin/fault", json={"mode": "hang"})
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(api.completions.create(model=MODEL, prompt="hi", max_tokens=1), timeout=0.2)
        assert (await session.post(server.url + "/admin/fault", json={"mode": "sideways"})).status == 400
        await session.post(server.url + "/admin/fault", json={"mode": "ok"})
    answer = await api.completions.create(model=MODEL, prompt="hi", max_tokens=1)
    assert answer.usage.completion_tokens == 1


async def test_in_process_fleet_serves_every_pool() -> None:
    async with run_emulated_fleet([("chat", MODEL, "l4", 2), ("long", MODEL, "h100", 1)], time_scale=0.05) as fleet:
        pools = fleet.pools()
        assert sorted(pools) == ["chat", "long"] and len(fleet.urls) == 3
        assert [e.gpu for e in pools["chat"].endpoints] == ["l4", "l4"]
        assert pools["chat"].endpoints[0].max_context_tokens == L4_24GB.max_model_len
        for url in fleet.urls:
            api = AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
            answer = await api.completions.create(model=MODEL, prompt="ping", max_tokens=2)
            assert answer.usage.completion_tokens == 2
            assert fleet.server(url).stats().finished_total == 1


def test_fleet_in_a_child_process_starts_and_stops() -> None:
    import urllib.request

    from fleetgate.pools.emulator.launcher import fleet_subprocess

    with fleet_subprocess([("chat", MODEL, "l4", 2)], time_scale=0.1) as state:
        assert len(state.urls) == 2 and state.to_pools()["chat"].endpoints[1].url == state.urls[1]
        for url in state.urls:
            assert urllib.request.urlopen(url + "/health", timeout=5).status == 200
    with pytest.raises(OSError):
        urllib.request.urlopen(state.urls[0] + "/health", timeout=2)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_fleet_up_and_down_commands(tmp_path, capsys) -> None:
    import urllib.request

    from fleetgate.app.cli import main

    ports = [free_port(), free_port()]
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(
        "pools:\n"
        f"  - {{name: small, model: {MODEL}, gpu: l4, count: 1, base_port: {ports[0]}}}\n"
        f"  - {{name: big, model: {MODEL}, gpu: h100, count: 1, base_port: {ports[1]}}}\n"
        "  - {name: remote, model: m, instances: [{url: 'http://10.0.0.1:8000'}]}\n"
    )
    state_dir = tmp_path / "state"
    try:
        assert main(["fleet", "up", str(fleet_file), "--time-scale", "0.1", "--state-dir", str(state_dir)]) == 0
        out = capsys.readouterr().out
        assert f"small: http://127.0.0.1:{ports[0]}" in out and "fleet up: 2 instances" in out
        assert urllib.request.urlopen(f"http://127.0.0.1:{ports[1]}/health", timeout=5).status == 200
        assert main(["fleet", "up", str(fleet_file), "--state-dir", str(state_dir)]) == 1
        assert "already up" in capsys.readouterr().err
        assert main(["fleet", "status", "--state-dir", str(state_dir)]) == 0
        assert capsys.readouterr().out.count("healthy") == 2
    finally:
        assert main(["fleet", "down", "--state-dir", str(state_dir)]) == 0
    assert "fleet down: stopped pid" in capsys.readouterr().out
    assert not (state_dir / "fleet.json").exists()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/health", timeout=2)
    main(["fleet", "down", "--state-dir", str(state_dir)])
    assert "no fleet is up" in capsys.readouterr().out


async def test_answers_end_on_their_own_unless_ignore_eos(start_server: ServerFactory) -> None:
    server = await start_server()
    api = client(server)
    natural = await api.chat.completions.create(model=MODEL, messages=chat("tell me more"), max_tokens=1000)
    assert natural.choices[0].finish_reason == "stop" and 0 < natural.usage.completion_tokens < 1000
    forced = await api.chat.completions.create(model=MODEL, messages=chat("tell me more"), max_tokens=1000,
                                               extra_body={"ignore_eos": True})
    assert forced.choices[0].finish_reason == "length" and forced.usage.completion_tokens == 1000
    assert forced.choices[0].message.content.startswith(natural.choices[0].message.content)
