"""The engine's read-only views for the simulator's precise mode and oracle: matched_blocks, prefill_backlog."""

from __future__ import annotations

from fleetgate.core.tokens import kv_block_hashes
from fleetgate.pools.emulator.engine import Engine, EngineRequest
from fleetgate.pools.profiles import GpuProfile

SMALL = GpuProfile(
    name="small",
    prefill_tokens_per_s=10_000.0,
    step_overhead_s=0.01,
    decode_per_seq_s=0.001,
    decode_per_context_token_s=1e-6,
    kv_cache_tokens=16 * 256,
    max_num_seqs=8,
    max_num_batched_tokens=256,
    max_model_len=2048,
)


def prompt(seed: str, tokens: int) -> str:
    unit = f"<{seed}>lorem ipsum dolor sit amet "
    return (unit * (tokens * 4 // len(unit) + 1))[: tokens * 4]


def request(rid: str, text: str, max_tokens: int = 2) -> EngineRequest:
    return EngineRequest(rid, tuple(kv_block_hashes(text)), len(text) // 4, max_tokens, 0.0)


def drain(engine: Engine) -> None:
    now = 0.0
    while engine.has_work():
        now += engine.step(now).duration_s


def test_matched_blocks_counts_the_cached_leading_blocks() -> None:
    engine = Engine(SMALL)
    first = request("a", prompt("a", 200))  # 12 full blocks and 8 tokens
    engine.add(first)
    assert engine.matched_blocks(first.block_hashes) == 0  # nothing computed yet
    drain(engine)
    assert len(first.block_hashes) == 12
    assert engine.matched_blocks(first.block_hashes) == 12  # freed, still cached
    sibling = request("b", prompt("a", 200)[: 5 * 64] + prompt("z", 120))
    assert engine.matched_blocks(sibling.block_hashes) == 5
    assert engine.matched_blocks(request("c", prompt("c", 200)).block_hashes) == 0
    assert engine.matched_blocks(()) == 0


def test_matched_blocks_is_empty_without_prefix_caching() -> None:
    engine = Engine(SMALL, enable_prefix_caching=False)
    first = request("a", prompt("a", 200))
    engine.add(first)
    drain(engine)
    assert engine.matched_blocks(first.block_hashes) == 0


def test_prefill_backlog_counts_unfinished_prefill_and_waiting_tokens_beyond_their_cached_prefix() -> None:
    engine = Engine(SMALL)
    engine.add(request("warm", prompt("w", 160)))
    drain(engine)  # 10 blocks of "w" cached
    engine.add(request("long", prompt("l", 600)))
    engine.add(request("twin", prompt("l", 600)))  # behind its twin: only the tail block is left to it
    engine.add(request("warm2", prompt("w", 160)))  # all but the last block cached (the last token is recomputed)
    engine.add(request("new", prompt("n", 100)))
    assert engine.prefill_backlog() == 600 + (600 - 37 * 16) + (160 - 9 * 16) + 100
    engine.step(0.0)  # "long" prefills its first 256 tokens
    assert engine.prefill_backlog() == (600 - 256) + (600 - 37 * 16) + (160 - 9 * 16) + 100
    drain(engine)
    assert engine.prefill_backlog() == 0
