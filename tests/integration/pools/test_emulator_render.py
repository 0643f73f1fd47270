"""The emulator's prompt renderers (POST /v1/chat/completions/render, /v1/completions/render), over
real HTTP, and the real vllm-router's cache_aware policy routing on the token ids they return."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.peers import peer_venv
from support.servers import free_port, in_thread

from fleetgate.core.tokens import KV_BLOCK_TOKENS, count_tokens
from fleetgate.loadgen.peers import (
    PEERS,
    RouterSpec,
    find_peer,
    router_command,
    router_process,
    wait_router_ready,
)
from fleetgate.pools.emulator.local import run_emulated_fleet
from fleetgate.pools.emulator.server import EmulatorServer
from fleetgate.pools.emulator.text import render_chat_prompt
from fleetgate.pools.kv_keys import chain_keys, char_token_bytes, pack_token_ids
from fleetgate.pools.profiles import H100_80GB

pytestmark = pytest.mark.integration

MODEL = "llama-3.1-8b"
GENERATE_REQUEST_KEYS = {"request_id", "token_ids", "features", "sampling_params", "model", "stream", "stream_options",
                         "cache_salt", "priority", "kv_transfer_params"}  # vLLM's GenerateRequest


async def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        return response.status, await response.json()


async def test_render_returns_vllm_generate_requests_with_the_engines_token_ids() -> None:
    server = EmulatorServer(H100_80GB, MODEL, time_scale=0.1)
    await server.start()
    try:
        messages = [{"role": "system", "content": "You are terse. " * 20}, {"role": "user", "content": "hi!"}]
        status, chat = await post(server.url + "/v1/chat/completions/render",
                                  {"model": MODEL, "messages": messages, "max_tokens": 7, "stream": True,
                                   "stream_options": {"include_usage": True}})
        assert status == 200 and set(chat) == GENERATE_REQUEST_KEYS
        assert chat["request_id"].startswith("chatcmpl-") and chat["model"] == MODEL and chat["features"] is None
        assert chat["sampling_params"]["max_tokens"] == 7
        assert chat["stream"] is True and chat["stream_options"]["include_usage"] is True
        text = render_chat_prompt(messages)
        ids = chat["token_ids"]
        assert len(text) % 4 != 0 and len(ids) == count_tokens(text)  # a partial last token is an id too
        # The full tokens are the ids the engine hashes into its cached blocks: same block keys.
        assert pack_token_ids(ids[: len(text) // 4]) == char_token_bytes(text)
        assert chain_keys(pack_token_ids(ids), KV_BLOCK_TOKENS) == chain_keys(char_token_bytes(text), KV_BLOCK_TOKENS)

        status, completions = await post(server.url + "/v1/completions/render", {"model": MODEL, "prompt": "abcdefgh"})
        assert status == 200 and isinstance(completions, list) and len(completions) == 1
        (one,) = completions
        assert set(one) == GENERATE_REQUEST_KEYS and one["request_id"].startswith("cmpl-")
        assert one["token_ids"] == [int.from_bytes(b"abcd", "little"), int.from_bytes(b"efgh", "little")]
        assert one["stream"] is False and one["stream_options"] is None
        assert server.stats().prompt_tokens_total == 0  # rendering never reaches the engine
    finally:
        await server.stop()


async def test_render_refuses_what_generation_refuses() -> None:
    server = EmulatorServer(H100_80GB, MODEL, time_scale=0.1, max_model_len=64)
    await server.start()
    try:
        status, body = await post(server.url + "/v1/completions/render", {"model": "other-model", "prompt": "x"})
        assert status == 404 and body["error"]["type"] == "NotFoundError"
        status, body = await post(server.url + "/v1/chat/completions/render", {"model": MODEL})
        assert status == 400 and "messages" in body["error"]["message"]
        status, body = await post(server.url + "/v1/completions/render", {"prompt": "x" * 400})
        assert status == 400 and body["error"]["param"] == "input_tokens"
        await post(server.url + "/admin/fault", {"mode": "503"})
        status, body = await post(server.url + "/v1/completions/render", {"prompt": "x"})
        assert status == 503 and body["error"]["code"] == 503
    finally:
        await server.stop()


ROUTER_METRIC = re.compile(r'^(vllm_router_[a-z_]+)\{([^}]*)\} (\S+)$', re.MULTILINE)
GROUP_PROMPTS = {  # two long system prompts: requests of a group share ~2000 characters of prefix
    "billing": "You answer billing questions for Acme Cloud. Invoices are monthly; refunds take 5 days. " * 24,
    "network": "You debug network problems: check DNS, then routes, then firewalls, then the MTU size. " * 24,
}
PER_GROUP = 3


def http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def router_counters(metrics_url: str) -> dict[tuple[str, str], float]:
    """(metric name, labels) -> value, from vllm-router's own Prometheus endpoint."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    return {(name, labels): float(value) for name, labels, value in ROUTER_METRIC.findall(text)}


def test_vllm_router_cache_aware_routes_on_rendered_tokens(tmp_path: Path) -> None:
    """vllm-router 0.1.17 asks a worker's render endpoint for token ids; with them every decision is
    a prefix hit or miss (not `missing_tokens`) and a group sharing a prefix stays on one instance."""
    spec = RouterSpec.parse("vllm-router")
    executable = find_peer(PEERS["vllm-router"], peer_venv("vllm-router"))
    with in_thread(lambda: run_emulated_fleet([("chat", MODEL, "h100", 2)], time_scale=0.05)) as (fleet, _loop):
        port, metrics_port = free_port(), free_port()
        argv = router_command(spec, executable=executable, urls=fleet.urls, fleet_file=tmp_path / "unused.yaml",
                              port=port, metrics_port=metrics_port, ttft_slo_ms=1000)
        with router_process(argv, tmp_path / "router.log") as process:
            url = f"http://127.0.0.1:{port}"
            wait_router_ready(url, process, instances=2, timeout_s=20, log=tmp_path / "router.log")
            for group, system in GROUP_PROMPTS.items():
                before = {u: http_json(u + "/admin/stats")["finished_total"] for u in fleet.urls}
                for i in range(PER_GROUP):  # one at a time: load stays balanced, so cache_aware decides
                    messages = [{"role": "system", "content": system}, {"role": "user", "content": f"Question {i}?"}]
                    answer = http_json(url + "/v1/chat/completions", {"model": MODEL, "messages": messages, "max_tokens": 4})
                    assert answer["usage"]["completion_tokens"] >= 1
                served = sorted(http_json(u + "/admin/stats")["finished_total"] - before[u] for u in fleet.urls)
                assert served == [0, PER_GROUP], (group, served)
            counters = router_counters(f"http://127.0.0.1:{metrics_port}/metrics")
    decisions = {labels: value for (name, labels), value in counters.items()
                 if name == "vllm_router_prefix_routing_decisions_total"}
    inputs = {labels: value for (name, labels), value in counters.items() if name == "vllm_router_kv_routing_inputs_total"}
    requests = len(GROUP_PROMPTS) * PER_GROUP
    assert not any('outcome="missing_tokens"' in labels for labels in decisions), decisions
    assert sum(decisions.values()) == requests, decisions
    assert sum(v for k, v in decisions.items() if 'outcome="prefix_hit"' in k) == requests - len(GROUP_PROMPTS), decisions
    assert inputs == {'transport="http",result="render"': requests * 2}, inputs  # it renders on every worker
