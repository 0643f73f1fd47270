"""The emulator against real vLLM (CPU build) on the APIs beyond chat and completions: /v1/messages,
/v1/responses, /tokenize, /detokenize, /v1/embeddings and the LoRA endpoints, compared as
test_conformance.py compares the others (every field the emulator sends, vLLM sends too, with the same
JSON type). Where the CPU build cannot serve one, the test pins what it answers instead
(deploy/vllm-cpu/DIFFERENCES.md says so)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import orjson
import pytest
from support.gateway import MODEL
from support.servers import free_port
from test_conformance import MAX_MODEL_LEN, assert_shape, get, post

from fleetgate.pools.emulator.server import EmulatorServer
from fleetgate.pools.realvllm import VllmFleet, VllmSettings, run_vllm

pytestmark = pytest.mark.realvllm

MESSAGES = {"model": MODEL, "max_tokens": 8, "system": "You are terse.",
            "messages": [{"role": "user", "content": "Name a routing algorithm."}]}
RESPONSES = {"model": MODEL, "input": "Name a routing algorithm.", "instructions": "You are terse.",
             "max_output_tokens": 8}


def typed_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """`event: <type>` / `data: <json>` pairs, the framing checked on the way: the data's type is the event's."""
    assert raw.endswith(b"\n\n"), raw[-80:]
    events = []
    for block in raw[:-2].split(b"\n\n"):
        kind, data = block.split(b"\n", 1)
        assert kind.startswith(b"event: ") and data.startswith(b"data: "), block[:120]
        payload = orjson.loads(data[len(b"data: "):])
        assert payload["type"] == kind[len(b"event: "):].decode(), block[:120]
        events.append((payload["type"], payload))
    return events


def first_of_each(events: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for kind, payload in events:
        found.setdefault(kind, payload)
    return found


# -- /v1/messages -------------------------------------------------------------------------------


async def test_messages_bodies_events_and_errors_match(vllm_url: str, emulator: EmulatorServer) -> None:
    (real_status, _, real_body), (emu_status, _, emu_body) = (await post(vllm_url, "/v1/messages", MESSAGES),
                                                             await post(emulator.url, "/v1/messages", MESSAGES))
    assert real_status == emu_status == 200, real_body[:300]
    real, emulated = orjson.loads(real_body), orjson.loads(emu_body)
    assert_shape(emulated, real)
    assert set(real["usage"]) == set(emulated["usage"]), real["usage"]  # cache reads and writes apart from input_tokens
    assert (real["type"], real["role"], real["content"][0]["type"]) == ("message", "assistant", "text")

    streamed = {**MESSAGES, "stream": True}
    real_events = typed_events((await post(vllm_url, "/v1/messages", streamed))[2])
    emu_events = typed_events((await post(emulator.url, "/v1/messages", streamed))[2])
    order = ["message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
             "message_stop"]
    assert [k for k in dict.fromkeys(k for k, _ in real_events)] == order, [k for k, _ in real_events]
    assert [k for k in dict.fromkeys(k for k, _ in emu_events)] == order
    real_first, emu_first = first_of_each(real_events), first_of_each(emu_events)
    for kind in order:
        assert_shape(emu_first[kind], real_first[kind], kind)
    assert set(real_first["message_delta"]["usage"]) == set(emu_first["message_delta"]["usage"])

    # an unknown model: Anthropic's error shape; a body the schema refuses: OpenAI's (vLLM's FastAPI layer)
    for body, status, anthropic_shape in (({**MESSAGES, "model": "nope"}, 404, True), ({**MESSAGES, "max_tokens": 0}, 400, False)):
        (real_status, _, real_body), (emu_status, _, emu_body) = (await post(vllm_url, "/v1/messages", body),
                                                                 await post(emulator.url, "/v1/messages", body))
        real, emulated = orjson.loads(real_body), orjson.loads(emu_body)
        assert real_status == emu_status == status, (real_status, real)
        assert_shape(emulated, real)
        assert (real.get("type") == emulated.get("type") == "error") is anthropic_shape, real


# -- /v1/responses ------------------------------------------------------------------------------


async def test_responses_bodies_and_events_match(vllm_url: str, emulator: EmulatorServer) -> None:
    (real_status, _, real_body), (emu_status, _, emu_body) = (await post(vllm_url, "/v1/responses", RESPONSES),
                                                             await post(emulator.url, "/v1/responses", RESPONSES))
    assert real_status == emu_status == 200, real_body[:300]
    real, emulated = orjson.loads(real_body), orjson.loads(emu_body)
    assert_shape(emulated, real)
    assert real["object"] == emulated["object"] == "response"

    streamed = {**RESPONSES, "stream": True}
    real_events = typed_events((await post(vllm_url, "/v1/responses", streamed))[2])
    emu_events = typed_events((await post(emulator.url, "/v1/responses", streamed))[2])
    real_first, emu_first = first_of_each(real_events), first_of_each(emu_events)
    missing = sorted(set(emu_first) - set(real_first))
    assert not missing, f"the emulator sends events vLLM does not: {missing} (vLLM: {sorted(real_first)})"
    for kind, payload in emu_first.items():
        assert_shape(payload, real_first[kind], kind)
    assert real_events[0][0] == emu_events[0][0] == "response.created"
    assert real_events[-1][0] == emu_events[-1][0]

    # vLLM keeps no response without VLLM_ENABLE_RESPONSES_API_STORE (the session's instances): a follow-up is a
    # 404 naming it, as the emulator answers for one it does not hold
    follow = {"model": MODEL, "input": "And another?", "previous_response_id": real["id"], "max_output_tokens": 4}
    status, _, body = await post(vllm_url, "/v1/responses", follow)
    assert status == 404, body[:300]
    status_e, _, body_e = await post(emulator.url, "/v1/responses", {**follow, "previous_response_id": "resp_unknown"})
    assert status_e == 404
    assert_shape(orjson.loads(body_e), orjson.loads(body))


# -- /tokenize, /detokenize, /v1/embeddings ------------------------------------------------------


async def test_tokenize_and_detokenize_match(vllm_url: str, emulator: EmulatorServer) -> None:
    body = {"model": MODEL, "prompt": "Hello, fleet!"}
    (real_status, _, real_body), (emu_status, _, emu_body) = (await post(vllm_url, "/tokenize", body),
                                                             await post(emulator.url, "/tokenize", body))
    assert real_status == emu_status == 200, real_body[:300]
    real, emulated = orjson.loads(real_body), orjson.loads(emu_body)
    assert_shape(emulated, real)
    assert real["count"] == len(real["tokens"]) and real["max_model_len"] == emulated["max_model_len"] == MAX_MODEL_LEN
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    assert (await post(vllm_url, "/tokenize", chat))[0] == (await post(emulator.url, "/tokenize", chat))[0] == 200

    for url, tokens in ((vllm_url, real["tokens"]), (emulator.url, emulated["tokens"])):
        status, _, text = await post(url, "/detokenize", {"model": MODEL, "tokens": tokens})
        assert status == 200 and "Hello, fleet!" in orjson.loads(text)["prompt"], text[:300]


async def test_embeddings_on_a_generating_model_are_not_served(vllm_url: str, emulator: EmulatorServer) -> None:
    """The CPU build serves the tiny generating model, so it registers no /v1/embeddings: FastAPI's 404."""
    body = {"model": MODEL, "input": "red bike"}
    (real_status, _, real_body), (emu_status, _, emu_body) = (await post(vllm_url, "/v1/embeddings", body),
                                                             await post(emulator.url, "/v1/embeddings", body))
    assert (real_status, orjson.loads(real_body)) == (emu_status, orjson.loads(emu_body)) == (404, {"detail": "Not Found"})


# -- LoRA -----------------------------------------------------------------------------------------


def write_adapter(directory: Path, model_dir: Path, seed: int) -> Path:
    """A rank-8 LoRA on q_proj and v_proj of the tiny Llama (deploy/vllm-cpu/make_tiny_model.py), in PEFT's layout."""
    import numpy as np
    from safetensors.numpy import save_file

    config = json.loads((model_dir / "config.json").read_text())
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    kv = config["num_key_value_heads"] * hidden // config["num_attention_heads"]
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(layers):
        for module, out in (("q_proj", hidden), ("v_proj", kv)):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((8, hidden), dtype=np.float32) * 0.01
            tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((out, 8), dtype=np.float32) * 0.01
    directory.mkdir(parents=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    (directory / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "bias": "none",
        "target_modules": ["q_proj", "v_proj"], "fan_in_fan_out": False, "base_model_name_or_path": str(model_dir)}))
    return directory


@pytest.fixture(scope="module")
def lora_vllm(vllm_settings: VllmSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmFleet]:
    """One more instance, with LoRA (one slot) and runtime loading, and the responses store on."""
    from dataclasses import replace

    settings = replace(vllm_settings, kv_events_dir=None,
                       extra_args=("--enable-lora", "--max-loras", "1", "--max-lora-rank", "8"),
                       extra_env=(*vllm_settings.extra_env, ("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True"),
                                  ("VLLM_ENABLE_RESPONSES_API_STORE", "1")))
    with run_vllm(settings, [free_port()], log_dir=tmp_path_factory.mktemp("vllm-lora-logs")) as fleet:
        yield fleet


@pytest.fixture
async def lora_emulator() -> AsyncIterator[EmulatorServer]:
    server = EmulatorServer("l4", MODEL, max_model_len=MAX_MODEL_LEN, time_scale=0.2, max_loras=1, lora_load_s=0.1)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_lora_load_list_serve_and_unload_match(lora_vllm: VllmFleet, lora_emulator: EmulatorServer,
                                                     vllm_settings: VllmSettings, tmp_path: Path) -> None:
    real_url, adapters = lora_vllm.urls[0], {"sql-lora": str(write_adapter(tmp_path / "sql-lora", vllm_settings.model_dir, 1))}
    for url in (real_url, lora_emulator.url):
        status, content_type, text = await post(url, "/v1/load_lora_adapter",
                                                 {"lora_name": "sql-lora", "lora_path": adapters["sql-lora"]})
        assert status == 200 and text.decode().startswith("Success: LoRA adapter 'sql-lora' added"), text[:300]
    again = {"lora_name": "sql-lora", "lora_path": adapters["sql-lora"]}
    (real_status, _, real_body), (emu_status, _, emu_body) = (await post(real_url, "/v1/load_lora_adapter", again),
                                                             await post(lora_emulator.url, "/v1/load_lora_adapter", again))
    assert real_status == emu_status == 400, real_body[:300]
    real, emulated = orjson.loads(real_body), orjson.loads(emu_body)
    assert_shape(emulated, real)
    assert real["error"]["type"] == emulated["error"]["type"] and "already been loaded" in real["error"]["message"]

    (real_status, real_models), (emu_status, emu_models) = await get(real_url, "/v1/models"), await get(
        lora_emulator.url, "/v1/models")
    real_cards, emu_cards = orjson.loads(real_models)["data"], orjson.loads(emu_models)["data"]
    assert [c["id"] for c in real_cards] == [c["id"] for c in emu_cards] == [MODEL, "sql-lora"]
    assert real_cards[1]["parent"] == emu_cards[1]["parent"] == MODEL
    assert_shape(emu_cards[1], real_cards[1])

    chat = {"model": "sql-lora", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    (real_status, _, real_body), (emu_status, _, emu_body) = (await post(real_url, "/v1/chat/completions", chat),
                                                             await post(lora_emulator.url, "/v1/chat/completions", chat))
    assert real_status == emu_status == 200, real_body[:300]
    assert orjson.loads(real_body)["model"] == orjson.loads(emu_body)["model"] == "sql-lora"

    gone = {"lora_name": "no-such-lora"}
    (real_status, _, real_body), (emu_status, _, emu_body) = (await post(real_url, "/v1/unload_lora_adapter", gone),
                                                             await post(lora_emulator.url, "/v1/unload_lora_adapter", gone))
    assert real_status == emu_status == 404, real_body[:300]
    assert_shape(orjson.loads(emu_body), orjson.loads(real_body))

    info = [line for line in (await get(real_url, "/metrics"))[1].decode().splitlines()
            if line.startswith("vllm:lora_requests_info{")]
    assert info and 'max_lora="1"' in info[0], info


async def test_a_stored_response_is_continued_and_retrieved(lora_vllm: VllmFleet, lora_emulator: EmulatorServer) -> None:
    """With VLLM_ENABLE_RESPONSES_API_STORE, vLLM keeps responses: previous_response_id and GET work, as in the emulator."""
    for url in (lora_vllm.urls[0], lora_emulator.url):
        status, _, body = await post(url, "/v1/responses", RESPONSES)
        assert status == 200, body[:300]
        first = orjson.loads(body)
        status, body = await get(url, f"/v1/responses/{first['id']}")
        assert status == 200 and orjson.loads(body)["id"] == first["id"], body[:300]
        status, _, body = await post(url, "/v1/responses", {"model": MODEL, "input": "And another?",
                                                            "previous_response_id": first["id"], "max_output_tokens": 4})
        assert status == 200, body[:300]
        follow = orjson.loads(body)
        assert follow["previous_response_id"] == first["id"]
        assert follow["usage"]["input_tokens"] > first["usage"]["input_tokens"]
