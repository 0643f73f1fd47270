"""A YAML policy routing through the real gateway over a heterogeneous emulated fleet, and hot reload.

Three pools with different GPU profiles and context limits (L4 8k, A100 16k, H100 32k): long prompts
must land in the long-context pool, tool-using multi-turn requests in the agent pool, short chat in
the small pool. Reloading a policy that swaps two pools takes effect without dropping a stream that
is in flight; an invalid policy changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from support.gateway import eventually, gateway

from fleetgate.pools.config import dump_fleet, fleet_from_pools
from fleetgate.pools.emulator.local import run_emulated_fleet

pytestmark = pytest.mark.integration

MODEL = "llama-3.1-8b"
POLICY = """\
version: 1
rules:
  - name: long-prompts
    match: {context_class: [long, very-long]}
    pools: [long]
  - name: agents
    match: {agentic: true, multi_turn: true}
    pools: [agents]
  - name: short-chat
    match: {api: chat, context_class: short}
    pools: [small]
defaults:
  pools: [agents]
"""
SWAPPED = """\
version: 1
rules:
  - name: long-prompts
    match: {context_class: [long, very-long]}
    pools: [long]
  - name: agents
    match: {agentic: true, multi_turn: true}
    pools: [small]
  - name: short-chat-v2
    match: {api: chat, context_class: short}
    pools: [agents]
defaults:
  pools: [agents]
"""
STREAM_TOKENS = 400  # about 2 s on the emulated L4 at time_scale 0.1: still running when the reload lands
INVALID = POLICY.replace("pools: [long]", "pools: [no-such-pool]")

SHORT_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hello there!"}], "max_tokens": 4}
LONG_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Summarise: " + "lorem ipsum " * 4000}], "max_tokens": 4}
AGENT_TURN = {
    "model": MODEL,
    "max_tokens": 4,
    "tools": [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}],
    "messages": [
        {"role": "user", "content": "Find the release notes."},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "notes: v2 adds reload"},
        {"role": "user", "content": "Now summarise them."},
    ],
}


async def pool_of(session: aiohttp.ClientSession, url: str, body: dict) -> str:
    async with session.post(url + "/v1/chat/completions", json=body) as response:
        assert response.status == 200, await response.text()
        await response.read()
        return response.headers["x-fleetgate-pool"]


async def rule_for(session: aiohttp.ClientSession, url: str, body: dict) -> str:
    async with session.post(url + "/admin/explain", json=body) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["rule"]


@pytest.fixture
async def fleet_and_files(tmp_path: Path):
    specs = [("small", MODEL, "l4", 1), ("agents", MODEL, "a100", 1), ("long", MODEL, "h100", 1)]
    async with run_emulated_fleet(specs, time_scale=0.1) as fleet:
        fleet_path, policy_path = tmp_path / "fleet.yaml", tmp_path / "policy.yaml"
        fleet_path.write_text(dump_fleet(fleet_from_pools(fleet.pools())))
        policy_path.write_text(POLICY)
        yield fleet, fleet_path, policy_path


async def test_policy_routes_by_workload_and_reloads_without_dropping_a_stream(fleet_and_files, caplog):
    fleet, fleet_path, policy_path = fleet_and_files
    contexts = {name: pool.max_context_tokens for name, pool in fleet.pools().items()}
    assert contexts == {"small": 8192, "agents": 16384, "long": 32768}
    settings = {"fleet": str(fleet_path), "policy": str(policy_path), "policy_poll_s": 0.05, "semantic_cache": False}
    async with gateway([], **settings) as url, aiohttp.ClientSession() as session:
        assert await pool_of(session, url, LONG_CHAT) == "long"
        assert await pool_of(session, url, AGENT_TURN) == "agents"
        assert await pool_of(session, url, SHORT_CHAT) == "small"

        # A stream in flight on the small pool while a policy swapping small and agents loads.
        small = fleet.server(fleet.pool_urls()["small"][0])
        stream_body = {**SHORT_CHAT, "stream": True, "max_tokens": STREAM_TOKENS, "ignore_eos": True}
        async with session.post(url + "/v1/chat/completions", json=stream_body) as stream:
            assert stream.headers["x-fleetgate-pool"] == "small"
            first = await stream.content.readline()
            assert first.startswith(b"data: ")
            policy_path.write_text(SWAPPED)
            await _until_rule(session, url, "short-chat-v2")
            assert small.stats().running == 1, "the stream finished before the reload: the test proves nothing"
            assert await pool_of(session, url, SHORT_CHAT) == "agents"
            assert await pool_of(session, url, AGENT_TURN) == "small"
            body = first + await stream.read()
        events = [line.removeprefix(b"data: ") for line in body.splitlines() if line.startswith(b"data: ")]
        assert events[-1] == b"[DONE]"
        chunks = [orjson.loads(e) for e in events[:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        text_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
        assert len(text_chunks) == STREAM_TOKENS

        # An invalid policy is rejected with its YAML path logged: routing stays as it was.
        with caplog.at_level(logging.ERROR, logger="fleetgate.policies"):
            policy_path.write_text(INVALID)
            await eventually(lambda: "rules[0].pools[0]" in caplog.text, what="the invalid policy was rejected")
        assert await rule_for(session, url, SHORT_CHAT) == "short-chat-v2"
        assert await pool_of(session, url, SHORT_CHAT) == "agents"
        assert await pool_of(session, url, LONG_CHAT) == "long"


async def _until_rule(session: aiohttp.ClientSession, url: str, rule: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while await rule_for(session, url, SHORT_CHAT) != rule:
        assert time.monotonic() < deadline, f"rule {rule} not in effect after {timeout_s}s"
        await asyncio.sleep(0.02)


async def test_admin_reload_reports_errors_and_the_debug_header_shows_the_plan(fleet_and_files):
    _fleet, fleet_path, policy_path = fleet_and_files
    settings = {"fleet": str(fleet_path), "policy": str(policy_path), "policy_poll_s": 60, "semantic_cache": False}
    async with gateway([], **settings) as url, aiohttp.ClientSession() as session:
        async with session.post(url + "/v1/chat/completions", json=SHORT_CHAT,
                                headers={"x-fleetgate-debug": "1"}) as response:
            plan = response.headers["x-fleetgate-plan"]
        assert "rule=short-chat" in plan and "pools=small" in plan and "Hello" not in plan

        policy_path.write_text(INVALID)
        async with session.post(url + "/admin/policy/reload") as response:
            assert response.status == 422
            assert any("rules[0].pools[0]" in error for error in (await response.json())["errors"])
        assert await rule_for(session, url, SHORT_CHAT) == "short-chat"

        policy_path.write_text(SWAPPED)
        async with session.post(url + "/admin/policy/reload") as response:
            assert response.status == 200 and (await response.json()) == {"reloaded": True, "errors": []}
        assert await pool_of(session, url, SHORT_CHAT) == "agents"
