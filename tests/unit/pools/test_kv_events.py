"""KV events: decoding vLLM's msgpack batches, and one instance's block set kept from them."""

from __future__ import annotations

import msgpack
import pytest

from fleetgate.core.clock import ManualClock
from fleetgate.core.request import InferenceRequest
from fleetgate.pools.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    InstanceKvBlocks,
    KvEventBatch,
    KvEventDecodeError,
    decode_batch,
)
from fleetgate.pools.kv_keys import CharacterKeys, chain_keys, kv_hashes, pack_token_ids

B = 4  # block size of these tests


def stored(hashes: list, parent, tokens: list[int], **extra) -> dict:
    """A BlockStored as vLLM 0.32 encodes it: a tagged map (omit_defaults drops None defaults)."""
    return {"type": "BlockStored", "block_hashes": hashes, "parent_block_hash": parent, "token_ids": tokens,
            "block_size": B, "lora_id": None, "medium": "GPU", "lora_name": None, **extra}


def payload(*events) -> bytes:
    return msgpack.packb([1.5, list(events), 0])


def test_decodes_vllm_map_events_with_bytes_hashes() -> None:
    batch = decode_batch(payload(
        stored([b"h1", b"h2"], None, list(range(8)), group_idx=0, kv_cache_spec_kind="full_attention"),
        {"type": "BlockRemoved", "block_hashes": [b"h0"], "medium": "GPU"},
        {"type": "AllBlocksCleared"},
    ))
    assert batch.ts == 1.5 and batch.data_parallel_rank == 0
    assert batch.events == (
        BlockStored((b"h1", b"h2"), None, tuple(range(8)), B, None, "GPU", None, None, 0),
        BlockRemoved((b"h0",), "GPU"),
        AllBlocksCleared(),
    )


def test_decodes_array_like_events_of_older_releases() -> None:
    raw = msgpack.packb([2.0, [["BlockStored", [7, 8], 6, list(range(8)), B, None, None],
                               ["BlockRemoved", [6], None], ["AllBlocksCleared"]]])
    batch = decode_batch(raw)
    assert batch.data_parallel_rank is None
    assert batch.events == (BlockStored((7, 8), 6, tuple(range(8)), B), BlockRemoved((6,)), AllBlocksCleared())


@pytest.mark.parametrize("raw", [b"\xc1", msgpack.packb({"ts": 1}), msgpack.packb([1.0, [{"type": "Nope"}]]),
                                 msgpack.packb([1.0, [{"type": "BlockRemoved"}]])])
def test_rejects_what_is_not_a_batch(raw: bytes) -> None:
    with pytest.raises(KvEventDecodeError):
        decode_batch(raw)


def batch(*events) -> KvEventBatch:
    return decode_batch(payload(*events))


def keys(tokens: list[int]) -> tuple[int, ...]:
    return chain_keys(pack_token_ids(tokens), B)


@pytest.fixture
def blocks() -> InstanceKvBlocks:
    view = InstanceKvBlocks("i0", clock=ManualClock())
    view.connected(True)
    return view


def test_stored_blocks_chain_through_parents_and_match_prompt_keys(blocks: InstanceKvBlocks) -> None:
    prompt = list(range(100, 116))  # four blocks
    blocks.apply(0, batch(stored([b"a", b"b"], None, prompt[:8])))
    blocks.apply(1, batch(stored([b"c"], b"b", prompt[8:12])))  # the parent is vLLM's hash; the key is ours
    assert blocks.live and blocks.block_tokens == B
    assert blocks.matched_blocks(keys(prompt)) == 3
    assert blocks.matched_blocks(keys([1] + prompt[1:])) == 0  # first block differs: nothing further matches
    blocks.apply(2, batch(stored([b"x"], b"unknown", prompt[12:16])))  # parent never seen: no key
    assert blocks.matched_blocks(keys(prompt)) == 3


def test_removed_and_cleared(blocks: InstanceKvBlocks) -> None:
    prompt = list(range(12))
    blocks.apply(0, batch(stored([1, 2, 3], None, prompt)))
    blocks.apply(1, batch({"type": "BlockRemoved", "block_hashes": [2], "medium": "GPU"}))
    assert blocks.matched_blocks(keys(prompt)) == 1
    blocks.apply(2, batch({"type": "AllBlocksCleared"}))
    assert blocks.matched_blocks(keys(prompt)) == 0 and len(blocks) == 0 and blocks.live


def test_offload_media_other_groups_and_extra_keys_are_not_kept(blocks: InstanceKvBlocks) -> None:
    prompt = list(range(8))
    blocks.apply(0, batch(stored([1, 2], None, prompt, medium="CPU"), stored([3, 4], None, prompt, group_idx=1),
                          stored([5, 6], None, prompt, extra_keys=[None, ["salt"]])))
    assert blocks.matched_blocks(keys(prompt)) == 1  # only the block before the salted one
    blocks.apply(1, batch({"type": "BlockRemoved", "block_hashes": [5], "medium": "CPU"}))
    assert blocks.matched_blocks(keys(prompt)) == 1  # an offload tier's removal leaves the GPU block


def test_not_live_before_the_first_batch_nor_while_disconnected(blocks: InstanceKvBlocks) -> None:
    assert not blocks.live
    blocks.apply(0, batch())
    assert blocks.live
    blocks.connected(False)
    assert not blocks.live
    blocks.connected(True)
    assert not blocks.live  # batches may have been lost meanwhile: the next one tells
    blocks.apply(1, batch())
    assert blocks.live


def test_a_gap_clears_and_waits_for_a_resync(blocks: InstanceKvBlocks) -> None:
    prompt = list(range(8))
    blocks.apply(0, batch(stored([1, 2], None, prompt)))
    blocks.apply(2, batch())  # batch 1 was lost
    assert not blocks.live and blocks.gaps == 1 and len(blocks) == 0
    blocks.apply(3, batch(stored([1, 2], None, prompt)))
    assert not blocks.live  # what else batch 1 held is unknown
    blocks.apply(4, batch({"type": "AllBlocksCleared"}, stored([1, 2], None, prompt)))
    assert blocks.live and blocks.matched_blocks(keys(prompt)) == 2


def test_joining_mid_stream_is_a_gap_and_a_restart_resyncs(blocks: InstanceKvBlocks) -> None:
    blocks.apply(41, batch(stored([1], None, [1, 2, 3, 4])))
    assert not blocks.live and blocks.gaps == 1
    blocks.apply(0, batch(stored([9], None, [5, 6, 7, 8])))  # the publisher restarted: its cache began empty
    assert blocks.live and len(blocks) == 1


def test_a_heartbeating_publisher_goes_stale_when_silent() -> None:
    clock = ManualClock()
    blocks = InstanceKvBlocks("i0", clock=clock, stale_after_s=3.0)
    blocks.connected(True)
    blocks.apply(0, batch(stored([1], None, [1, 2, 3, 4])))
    clock.advance(60.0)
    assert blocks.live  # never heard a heartbeat (vLLM publishes only on change): silence is idleness
    blocks.apply(1, batch())
    clock.advance(3.5)
    assert not blocks.live
    blocks.apply(2, batch())
    assert blocks.live


def test_character_keys_equal_the_emulators_block_hashes() -> None:
    from fleetgate.core.tokens import kv_block_hashes
    from fleetgate.pools.emulator.text import render_chat_prompt

    messages = ({"role": "system", "content": "be brief " * 40}, {"role": "user", "content": "hello " * 30})
    request = InferenceRequest("r", "chat", "m", {}, False, messages=messages)
    text = render_chat_prompt(messages)
    hashes = kv_hashes(CharacterKeys(), request)
    assert hashes == tuple(kv_block_hashes(text)) and len(hashes) == len(text) // 64
    accented = InferenceRequest("r", "completions", "m", {}, False, prompt="é" * 200)
    assert len(kv_hashes(CharacterKeys(), accented)) == 200 // 64
