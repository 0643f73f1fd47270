"""The emulator against real vLLM: the same requests to both, compared field by field.

What must match: statuses, the JSON shape of bodies, chunks, usage, errors and /v1/models (every
field the emulator sends, vLLM sends too, with the same JSON type), SSE framing, the metric names,
types and labels the scraper reads, and that a client disconnect aborts the request. What may
differ (token counts, text, cache block size, ...) is listed in deploy/vllm-cpu/DIFFERENCES.md.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.gateway import MODEL

from fleetgate.pools.emulator.server import EmulatorServer
from fleetgate.pools.scrape import parse_vllm_metrics

pytestmark = pytest.mark.realvllm

MAX_MODEL_LEN = 4096
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a routing algorithm."}]


def body_for(api: str, text: str, **fields: Any) -> dict[str, Any]:
    prompt = {"messages": [{"role": "user", "content": text}]} if api == "chat" else {"prompt": text}
    return {"model": MODEL, **prompt, **fields}


def path_of(api: str) -> str:
    return "/v1/chat/completions" if api == "chat" else "/v1/completions"


async def post(url: str, path: str, body: dict[str, Any] | bytes) -> tuple[int, str, bytes]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with aiohttp.ClientSession() as session, session.post(
        url + path, data=data, headers={"content-type": "application/json"}, timeout=aiohttp.ClientTimeout(total=120)
    ) as response:
        return response.status, response.headers.get("content-type", ""), await response.read()


async def get(url: str, path: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url + path) as response:
        return response.status, await response.read()


async def both(real: str, emulator: EmulatorServer, path: str, body: dict[str, Any] | bytes) -> tuple[tuple, tuple]:
    return await post(real, path, body), await post(emulator.url, path, body)


def assert_shape(emulated: Any, real: Any, where: str = "") -> None:
    """Every key the emulator sends, vLLM sends too, with the same JSON type (null matches anything)."""
    if emulated is None or real is None:
        return
    assert type(emulated) is type(real) or {type(emulated), type(real)} <= {int, float}, (
        f"{where or 'body'}: emulator sends {type(emulated).__name__}, vLLM {type(real).__name__}")
    if isinstance(emulated, dict):
        missing = sorted(set(emulated) - set(real))
        assert not missing, f"{where or 'body'}: the emulator sends {missing}, vLLM does not ({sorted(real)})"
        for key, value in emulated.items():
            assert_shape(value, real[key], f"{where}.{key}")
    elif isinstance(emulated, list) and emulated and real:
        assert_shape(emulated[0], real[0], f"{where}[0]")


def sse_events(raw: bytes) -> list[bytes]:
    """The stream's events; framing is checked on the way: `data: ...` events, each ended by a blank line."""
    assert raw.endswith(b"\n\n"), raw[-80:]
    events = raw[:-2].split(b"\n\n")
    assert all(e.startswith(b"data: ") and b"\n" not in e for e in events), events[:3]
    return [e[len(b"data: "):] for e in events]


def stream_chunks(raw: bytes) -> list[dict[str, Any]]:
    events = sse_events(raw)
    assert events[-1] == b"[DONE]" and b"[DONE]" not in events[:-1]
    return [orjson.loads(e) for e in events[:-1]]


async def scrape(url: str) -> str:
    status, text = await get(url, "/metrics")
    assert status == 200
    return text.decode()


async def poll_running(url: str, want: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (running := parse_vllm_metrics(await scrape(url)).running) != want:
        assert time.monotonic() < deadline, f"{url}: vllm:num_requests_running stayed {running}, wanted {want}"
        await asyncio.sleep(0.1)


# -- /v1/models and /health ---------------------------------------------------------------------


async def test_models_and_health(vllm_url: str, emulator: EmulatorServer) -> None:
    (real_status, real_body), (emu_status, emu_body) = await get(vllm_url, "/v1/models"), await get(emulator.url, "/v1/models")
    assert real_status == emu_status == 200
    real, emulated = orjson.loads(real_body), orjson.loads(emu_body)
    assert_shape(emulated, real)
    assert [m["id"] for m in real["data"]] == [m["id"] for m in emulated["data"]] == [MODEL]
    for card in (real["data"][0], emulated["data"][0]):
        assert (card["object"], card["owned_by"], card["max_model_len"]) == ("model", "vllm", MAX_MODEL_LEN)
    assert (await get(vllm_url, "/health"))[0] == (await get(emulator.url, "/health"))[0] == 200


# -- whole answers ------------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_non_streamed_bodies_match(vllm_url: str, emulator: EmulatorServer, api: str) -> None:
    body = body_for(api, "Name a routing algorithm.", max_tokens=5, ignore_eos=True, temperature=0.0)
    (real_status, real_type, real_raw), (emu_status, emu_type, emu_raw) = await both(vllm_url, emulator, path_of(api), body)
    assert real_status == emu_status == 200
    assert real_type.startswith("application/json") and emu_type.startswith("application/json")
    real, emulated = orjson.loads(real_raw), orjson.loads(emu_raw)
    assert_shape(emulated, real)
    prefix = "chatcmpl-" if api == "chat" else "cmpl-"
    for answer in (real, emulated):
        assert answer["id"].startswith(prefix) and answer["model"] == MODEL
        assert answer["object"] == ("chat.completion" if api == "chat" else "text_completion")
        (choice,) = answer["choices"]
        assert choice["index"] == 0 and choice["finish_reason"] == "length"
        usage = answer["usage"]
        assert usage["completion_tokens"] == 5
        assert usage["total_tokens"] == usage["prompt_tokens"] + 5
        assert usage["prompt_tokens_details"]["cached_tokens"] == 0


# -- streams ------------------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["chat", "completions"])
@pytest.mark.parametrize("include_usage", [True, False])
async def test_sse_framing_and_chunks_match(vllm_url: str, emulator: EmulatorServer, api: str, include_usage: bool) -> None:
    body = body_for(api, "Name a routing algorithm.", max_tokens=6, ignore_eos=True, stream=True,
                    stream_options={"include_usage": include_usage})
    (real_status, real_type, real_raw), (emu_status, emu_type, emu_raw) = await both(vllm_url, emulator, path_of(api), body)
    assert real_status == emu_status == 200
    assert real_type.startswith("text/event-stream") and emu_type.startswith("text/event-stream")
    real, emulated = stream_chunks(real_raw), stream_chunks(emu_raw)
    for chunks in (real, emulated):
        assert len({c["id"] for c in chunks}) == 1 and {c["model"] for c in chunks} == {MODEL}
        assert {c["object"] for c in chunks} == {"chat.completion.chunk" if api == "chat" else "text_completion"}
        text_chunks = [c for c in chunks if c["choices"]]
        if api == "chat":
            assert text_chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        finishes = [c["choices"][0]["finish_reason"] for c in text_chunks]
        assert finishes[-1] == "length" and set(finishes[:-1]) <= {None}
        if include_usage:
            assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
            assert "cached_tokens" in chunks[-1]["usage"]["prompt_tokens_details"]
        else:
            assert all(c.get("usage") is None for c in chunks)
    assert_shape(emulated[0], real[0], "first chunk")
    assert_shape(emulated[-1], real[-1], "last chunk")
    real_middle = [c for c in real if c["choices"] and c["choices"][0]["finish_reason"] is None][-1]
    for chunk in (c for c in emulated[1 if api == "chat" else 0:] if c["choices"] and c["choices"][0]["finish_reason"] is None):
        assert_shape(chunk, real_middle, "text chunk")


# -- usage and the prefix cache -----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_usage_reports_cached_tokens_on_a_repeated_prompt(vllm_url: str, emulator: EmulatorServer, stream: bool) -> None:
    text = f"{uuid.uuid4().hex} " + "Prefix caching keeps the key and value tensors of a prompt. " * 40
    body = body_for("completions", text, max_tokens=2, ignore_eos=True, stream=stream,
                    stream_options={"include_usage": True} if stream else None)

    async def usage(url: str) -> dict[str, Any]:
        status, _type, raw = await post(url, "/v1/completions", body)
        assert status == 200
        return stream_chunks(raw)[-1]["usage"] if stream else orjson.loads(raw)["usage"]

    for url in (vllm_url, emulator.url):
        first, second = await usage(url), await usage(url)
        assert first["prompt_tokens"] == second["prompt_tokens"]
        assert first["prompt_tokens_details"]["cached_tokens"] == 0, url
        cached = second["prompt_tokens_details"]["cached_tokens"]
        assert 0 < cached < second["prompt_tokens"], (url, second)


# -- errors -------------------------------------------------------------------------------------

LONG = "word " * 5000  # over 4096 tokens for the tiny tokenizer and for the emulator's 4 chars/token
ERROR_CASES = [
    # (id, api, body, status, error type both must report (None: only the shape), param both must report)
    ("unknown model", "chat", {**body_for("chat", "hi"), "model": "no-such-model"}, 404, "NotFoundError", "model"),
    ("prompt over max length", "completions", body_for("completions", LONG, max_tokens=5), 400, "BadRequestError", "input_tokens"),
    ("messages over max length", "chat", body_for("chat", LONG, max_tokens=5), 400, "BadRequestError", "input_tokens"),
    ("max_tokens over max_model_len", "chat", body_for("chat", "hi", max_tokens=5000), 400, "BadRequestError", "max_tokens"),
    ("max_tokens zero", "completions", body_for("completions", "hi", max_tokens=0), 400, "BadRequestError", "max_tokens"),
    ("max_tokens negative", "chat", body_for("chat", "hi", max_tokens=-1), 400, "BadRequestError", "max_tokens"),
    ("negative temperature", "chat", body_for("chat", "hi", temperature=-1), 400, "BadRequestError", "temperature"),
    ("top_p zero", "completions", body_for("completions", "hi", top_p=0), 400, "BadRequestError", "top_p"),
    ("empty prompt", "completions", body_for("completions", ""), 400, "BadRequestError", "prompt"),
    ("malformed JSON", "chat", b'{"model": "tiny-llama", "messages": [', 400, None, None),
    ("body not an object", "completions", b"[1, 2]", 400, None, None),
    ("max_tokens not a number", "completions", body_for("completions", "hi", max_tokens="many"), 400, None, None),
    ("stream not a boolean", "chat", body_for("chat", "hi", stream="maybe"), 400, None, None),
    ("no messages", "chat", {"model": MODEL}, 400, None, None),
]


@pytest.mark.parametrize(("api", "body", "status", "error_type", "param"), [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
async def test_errors_match(vllm_url: str, emulator: EmulatorServer, api: str, body: dict | bytes, status: int,
                            error_type: str | None, param: str | None) -> None:
    (real_status, real_type, real_raw), (emu_status, emu_type, emu_raw) = await both(vllm_url, emulator, path_of(api), body)
    assert (real_status, emu_status) == (status, status), (real_raw, emu_raw)
    for raw, content_type in ((real_raw, real_type), (emu_raw, emu_type)):
        assert content_type.startswith("application/json")
        error = orjson.loads(raw)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == status, error
        assert isinstance(error["message"], str) and error["message"]
        if error_type is not None:
            assert (error["type"], error["param"]) == (error_type, param), error


async def test_max_tokens_past_the_context_is_cut_to_fit(vllm_url: str, emulator: EmulatorServer) -> None:
    """vLLM 0.32 no longer refuses prompt + max_tokens > max_model_len: it generates up to the limit."""
    # 3,981 tokens for the tiny tokenizer (2,488 for the emulator): vLLM only has to generate the last 115.
    body = body_for("completions", "word " * 1990, max_tokens=4000, ignore_eos=True)
    for url in (vllm_url, emulator.url):
        status, _type, raw = await post(url, "/v1/completions", body)
        assert status == 200, raw
        answer = orjson.loads(raw)
        assert answer["usage"]["total_tokens"] == MAX_MODEL_LEN and answer["choices"][0]["finish_reason"] == "length"


# -- metrics ------------------------------------------------------------------------------------

SCRAPED = {  # what pools/scrape.py reads, and the histograms and counters dashboards use
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:prefix_cache_queries": "counter",
    "vllm:prefix_cache_hits": "counter",
    "vllm:num_preemptions": "counter",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
}


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


async def test_metric_names_types_and_labels_match(vllm_url: str, emulator: EmulatorServer) -> None:
    for url in (vllm_url, emulator.url):  # one request each, so histograms and counters have samples
        assert (await post(url, "/v1/completions", body_for("completions", "metrics", max_tokens=2)))[0] == 200
    real, emulated = families(await scrape(vllm_url)), families(await scrape(emulator.url))
    for name, kind in SCRAPED.items():
        assert real[name].type == kind, f"vLLM's {name} is a {real[name].type}"
        assert emulated[name].type == kind, f"the emulator's {name} is a {emulated[name].type}"
        for family in (real[name], emulated[name]):
            labels = {frozenset(set(s.labels) - {"le"}) for s in family.samples}
            assert labels == {frozenset({"engine", "model_name"})}, (name, labels)
            assert {s.labels["model_name"] for s in family.samples} == {MODEL}
        real_samples = {s.name for s in real[name].samples}
        assert {s.name for s in emulated[name].samples} <= real_samples, name
    for text in (await scrape(vllm_url), await scrape(emulator.url)):
        load = parse_vllm_metrics(text)
        assert load.prefix_queries_tokens > 0 and 0 <= load.prefix_hits_tokens <= load.prefix_queries_tokens
        assert 0.0 <= load.kv_usage_ratio <= 1.0 and load.running == load.waiting == 0
        assert load.kv_cache_tokens, "vllm:cache_config_info with num_gpu_blocks and block_size"


# -- disconnects --------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
async def test_client_disconnect_aborts_the_request(vllm_url: str, emulator: EmulatorServer, stream: bool) -> None:
    body = body_for("chat", "Tell me a long story.", max_tokens=3000, ignore_eos=True, stream=stream)
    for url in (vllm_url, emulator.url):
        await poll_running(url, 0)
        async with aiohttp.ClientSession() as session:
            request = asyncio.ensure_future(session.post(url + "/v1/chat/completions", json=body))
            if stream:
                response = await request
                assert response.status == 200
                await response.content.readline()
                await poll_running(url, 1)
                response.close()
            else:
                await poll_running(url, 1)
                request.cancel()
        await poll_running(url, 0)
