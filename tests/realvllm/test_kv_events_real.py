"""Real vLLM's KV events (`--kv-events-config`, ZMQ on an ipc socket): their wire schema, and that
the blocks a chat prompt stores are the ones our keys for that prompt name, computed with the tiny
model's tokenizer.json."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import aiohttp
import msgpack
import pytest
import zmq
import zmq.asyncio
from support.gateway import MODEL

from fleetgate.core.request import InferenceRequest
from fleetgate.loadgen.realcache import reset_prefix_cache
from fleetgate.pools.kv_events import InstanceKvBlocks, decode_batch
from fleetgate.pools.kv_keys import TokenizerKeys, kv_hashes
from fleetgate.pools.realvllm import VllmFleet, VllmSettings

pytestmark = pytest.mark.realvllm

STORED_FIELDS = {"type", "block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium", "lora_name"}


async def test_a_served_prompt_is_stored_under_our_keys(real_vllm: VllmFleet, vllm_settings: VllmSettings) -> None:
    url = real_vllm.urls[0]
    events_url = vllm_settings.kv_events_url(urlsplit(url).port or 0)
    assert events_url is not None
    keys = TokenizerKeys(vllm_settings.model_dir / "tokenizer.json")
    # about 900 tokens: several blocks even at the CPU build's large block size
    messages = ({"role": "system", "content": "A man is playing a guitar on the street. " * 80},
                {"role": "user", "content": "What is the man playing?"})
    request = InferenceRequest("kv", "chat", MODEL, {}, False, messages=messages)
    prompt_ids = keys.token_ids(request)

    sock = zmq.asyncio.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(events_url)
    view = InstanceKvBlocks("real-0")
    view.connected(True)
    stored: list[dict] = []
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 90
            body = {"model": MODEL, "messages": list(messages), "max_tokens": 1}
            while not (stored and view.live):  # a SUB misses what is sent before it joins: repeat until in sync
                assert time.monotonic() < deadline, "no BlockStored event from vLLM"
                stored = []
                await reset_prefix_cache(session, url)  # AllBlocksCleared: the view resyncs on it
                async with session.post(url + "/v1/chat/completions", json=body) as response:
                    assert response.status == 200
                    usage = (await response.json())["usage"]
                while await sock.poll(2000):
                    _topic, seq, payload = await sock.recv_multipart()
                    raw = msgpack.unpackb(payload, raw=False)
                    assert isinstance(raw, list) and len(raw) == 3 and isinstance(raw[0], float)
                    stored += [e for e in raw[1] if isinstance(e, dict) and e.get("type") == "BlockStored"]
                    view.apply(int.from_bytes(seq, "big"), decode_batch(payload))
        assert usage["prompt_tokens"] == len(prompt_ids)  # our chat template and tokenizer are vLLM's
        block_size = stored[0]["block_size"]
        for event in stored:
            assert STORED_FIELDS <= set(event), event.keys()
            assert event["block_size"] == block_size and event["medium"] in (None, "GPU")
            assert len(event["token_ids"]) == len(event["block_hashes"]) * block_size
            assert all(isinstance(h, (bytes, int)) for h in event["block_hashes"])
        stored_ids = [t for event in stored for t in event["token_ids"]]
        full_blocks = len(prompt_ids) // block_size
        assert full_blocks >= 2 and stored_ids[: full_blocks * block_size] == prompt_ids[: full_blocks * block_size]
        assert view.live
        assert view.matched_blocks(kv_hashes(keys, request, block_size)) == full_blocks
    finally:
        sock.close(linger=0)
        await asyncio.sleep(0)
