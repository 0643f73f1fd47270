"""The emulated vLLM engine in virtual time: batching, prefix cache, eviction, preemption, timing."""

from __future__ import annotations

import dataclasses
import time

import pytest

from fleetgate.core.tokens import kv_block_hashes
from fleetgate.pools.emulator.engine import Engine, EngineRequest, RequestStats
from fleetgate.pools.profiles import H100_80GB, L4_24GB, PROFILES, GpuProfile

TINY = GpuProfile(
    name="tiny",
    prefill_tokens_per_s=10_000.0,
    step_overhead_s=0.01,
    decode_per_seq_s=0.001,
    decode_per_context_token_s=1e-6,
    kv_cache_tokens=16 * 64,
    max_num_seqs=4,
    max_num_batched_tokens=256,
    max_model_len=1024,
)


def text(seed: str, tokens: int) -> str:
    """Deterministic prompt text of exactly `tokens` stand-in tokens, unique per seed."""
    unit = f"<{seed}>lorem ipsum dolor sit amet "
    return (unit * (tokens * 4 // len(unit) + 1))[: tokens * 4]


def request(rid: str, prompt: str, max_tokens: int = 4, arrival_s: float = 0.0) -> EngineRequest:
    return EngineRequest(rid, tuple(kv_block_hashes(prompt)), len(prompt) // 4, max_tokens, arrival_s)


def run(engine: Engine, now_s: float = 0.0, max_steps: int = 100_000) -> tuple[dict[str, RequestStats], float]:
    """Step until idle; the finished stats by id and the end time."""
    done: dict[str, RequestStats] = {}
    for _ in range(max_steps):
        if not engine.has_work():
            return done, now_s
        out = engine.step(now_s)
        now_s += out.duration_s
        done.update({s.request_id: s for s in out.finished})
    raise AssertionError("engine did not drain")


def test_single_request_ttft_tpot_and_token_count() -> None:
    engine = Engine(TINY)
    engine.add(request("a", text("a", 200), max_tokens=5))
    done, end_s = run(engine)
    stats = done["a"]
    assert stats.output_tokens == 5 and stats.finish_reason == "length" and stats.cached_tokens == 0
    assert stats.ttft_s == pytest.approx(TINY.step_time_s(200, 0, 0))
    assert stats.tpot_s == pytest.approx(TINY.step_time_s(0, 1, 202), rel=0.05)
    assert stats.finished_s == pytest.approx(end_s)
    final = engine.stats()
    assert (final.running, final.waiting, final.kv_usage_ratio) == (0, 0, 0.0)
    assert final.prompt_tokens_total == 200 and final.generation_tokens_total == 5


def test_new_tokens_report_every_token_once() -> None:
    engine = Engine(TINY)
    engine.add(request("a", text("a", 100), max_tokens=7))
    engine.add(request("b", text("b", 300), max_tokens=3))
    emitted: dict[str, int] = {}
    now_s = 0.0
    while engine.has_work():
        out = engine.step(now_s)
        now_s += out.duration_s
        for rid, n in out.new_tokens.items():
            emitted[rid] = emitted.get(rid, 0) + n
    assert emitted == {"a": 7, "b": 3}


def test_prefix_reuse_across_requests() -> None:
    engine = Engine(TINY)
    shared = text("system", 160)  # 10 full blocks
    engine.add(request("first", shared + text("q1", 40)))
    first, now_s = run(engine)
    engine.add(request("second", shared + text("q2", 40), arrival_s=now_s))
    second, _ = run(engine, now_s)
    assert first["first"].cached_tokens == 0
    assert second["second"].cached_tokens == 160
    assert second["second"].ttft_s < first["first"].ttft_s
    stats = engine.stats()
    assert stats.prefix_hits_tokens == 160 and stats.prefix_queries_tokens == 400


def test_fully_cached_prompt_still_recomputes_its_last_block() -> None:
    engine = Engine(TINY)
    prompt = text("same", 64)  # exactly 4 blocks
    engine.add(request("a", prompt))
    _, now_s = run(engine)
    engine.add(request("b", prompt, arrival_s=now_s))
    done, _ = run(engine, now_s)
    assert done["b"].cached_tokens == 48


def test_prefix_caching_disabled_never_hits() -> None:
    engine = Engine(TINY, enable_prefix_caching=False)
    prompt = text("same", 100)
    engine.add(request("a", prompt))
    _, now_s = run(engine)
    engine.add(request("b", prompt, arrival_s=now_s))
    done, _ = run(engine, now_s)
    assert done["b"].cached_tokens == 0 and engine.stats().kv_cached_blocks == 0


def test_lru_evicts_least_recently_freed_blocks_under_pressure() -> None:
    engine = Engine(TINY, kv_cache_tokens=16 * 40)  # 40 blocks
    old, recent = text("old", 256), text("recent", 256)  # 16 blocks each
    engine.add(request("old", old, max_tokens=1))
    _, now_s = run(engine)
    engine.add(request("recent", recent, max_tokens=1, arrival_s=now_s))
    _, now_s = run(engine, now_s)
    assert engine.stats().kv_cached_blocks == 32
    # 16 never-used blocks are left; a 24-block prompt must evict 8 cached blocks, the oldest first.
    engine.add(request("big", text("big", 384), max_tokens=1, arrival_s=now_s))
    _, now_s = run(engine, now_s)
    engine.add(request("recent2", recent, max_tokens=1, arrival_s=now_s))
    engine.add(request("old2", old, max_tokens=1, arrival_s=now_s))
    done, _ = run(engine, now_s)
    assert done["recent2"].cached_tokens == 240  # 15 of 16 blocks (the last is recomputed)
    assert done["old2"].cached_tokens < 240  # lost blocks to eviction


def test_eviction_takes_a_requests_tail_blocks_before_its_head() -> None:
    engine = Engine(TINY, kv_cache_tokens=16 * 20)
    prompt = text("p", 256)  # 16 blocks
    engine.add(request("a", prompt, max_tokens=1))
    _, now_s = run(engine)
    engine.add(request("b", text("other", 112), max_tokens=1, arrival_s=now_s))  # 7 blocks: evicts 3
    _, now_s = run(engine, now_s)
    engine.add(request("c", prompt, max_tokens=1, arrival_s=now_s))
    done, _ = run(engine, now_s)
    assert done["c"].cached_tokens == 13 * 16  # the head 13 blocks survived


def test_requests_wait_when_kv_memory_is_short() -> None:
    engine = Engine(TINY, kv_cache_tokens=16 * 32)
    engine.add(request("a", text("a", 300), max_tokens=50))  # 19+ blocks
    engine.add(request("b", text("b", 300), max_tokens=50))
    engine.step(0.0)
    stats = engine.stats()
    assert stats.running == 1 and stats.waiting == 1
    done, _ = run(engine)
    assert done["b"].first_token_s > done["a"].first_token_s
    assert done["b"].preemptions == 0


def test_preemption_by_recompute_when_memory_runs_out_mid_decode() -> None:
    engine = Engine(TINY, kv_cache_tokens=16 * 20)
    # Both prompts fit (8 blocks each, 16 of 20) but their outputs cannot both grow to 6 blocks.
    engine.add(request("a", text("a", 120), max_tokens=90))
    engine.add(request("b", text("b", 120), max_tokens=90))
    done, _ = run(engine)
    assert done["a"].output_tokens == 90 and done["b"].output_tokens == 90
    assert done["b"].preemptions >= 1 and done["a"].preemptions == 0
    assert engine.stats().preemptions_total >= 1
    assert engine.stats().kv_usage_ratio == 0.0


def test_max_num_seqs_caps_the_running_batch() -> None:
    engine = Engine(TINY)
    for i in range(7):
        engine.add(request(f"r{i}", text(f"r{i}", 20), max_tokens=3))
    engine.step(0.0)
    stats = engine.stats()
    assert stats.running == TINY.max_num_seqs and stats.waiting == 3


def test_chunked_prefill_respects_max_num_batched_tokens() -> None:
    engine = Engine(TINY)
    engine.add(request("long", text("long", 600), max_tokens=2))
    durations = []
    first_tokens_at = None
    now_s = 0.0
    for step in range(3):
        out = engine.step(now_s)
        durations.append(out.duration_s)
        now_s += out.duration_s
        if "long" in out.new_tokens and first_tokens_at is None:
            first_tokens_at = step
    assert first_tokens_at == 2  # 256 + 256 + 88 tokens
    assert durations[0] == pytest.approx(TINY.step_time_s(256, 0, 0))
    assert durations[2] == pytest.approx(TINY.step_time_s(88, 0, 0))


def test_decodes_share_the_budget_with_a_prefill_chunk() -> None:
    engine = Engine(TINY)
    engine.add(request("d", text("d", 20), max_tokens=10))
    out = engine.step(0.0)
    engine.add(request("p", text("p", 600), max_tokens=2, arrival_s=out.duration_s))
    out = engine.step(out.duration_s)
    assert out.new_tokens == {"d": 1}
    assert out.duration_s == pytest.approx(TINY.step_time_s(255, 1, 21))


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))
def test_step_time_is_monotonic_in_batch_size(profile: GpuProfile) -> None:
    durations = []
    for batch in (1, 2, 8, 32, 64):
        engine = Engine(profile)
        for i in range(batch):
            engine.add(request(f"r{i}", text(f"r{i}", 64), max_tokens=10))
        engine.step(0.0)  # prefill everything
        durations.append(engine.step(1.0).duration_s)  # one decode step of the whole batch
    assert durations == sorted(durations) and durations[0] < durations[-1]


def test_profiles_order_by_speed() -> None:
    ttft = {}
    for name, profile in PROFILES.items():
        engine = Engine(profile)
        engine.add(request("a", text("a", 2000), max_tokens=2))
        done, _ = run(engine)
        ttft[name] = done["a"].ttft_s
    assert ttft["h100"] < ttft["a100"] < ttft["l4"]


def test_abort_frees_blocks_and_reports() -> None:
    engine = Engine(TINY)
    engine.add(request("a", text("a", 100), max_tokens=50))
    engine.add(request("w", text("w", 100), max_tokens=50))
    engine.step(0.0)
    aborted = engine.abort("a", now_s=1.0)
    assert aborted is not None and aborted.finish_reason == "abort" and aborted.finished_s == 1.0
    assert engine.abort("a") is None and engine.abort("nope") is None
    assert engine.abort("w") is not None
    assert not engine.has_work() and engine.stats().kv_usage_ratio == 0.0


@pytest.mark.parametrize(
    ("prompt_tokens", "max_tokens", "expected_output"),
    [(100, 10, 10), (1000, 100, 24), (1020, 1, 1)],
)
def test_output_is_cut_at_max_model_len(prompt_tokens: int, max_tokens: int, expected_output: int) -> None:
    engine = Engine(TINY)
    engine.add(request("a", text("a", prompt_tokens), max_tokens=max_tokens))
    done, _ = run(engine)
    assert done["a"].output_tokens == expected_output


def test_prompt_reaching_max_model_len_is_refused() -> None:
    engine = Engine(TINY)
    with pytest.raises(ValueError, match="max_model_len"):
        engine.add(request("a", text("a", 1024)))
    with pytest.raises(ValueError, match="duplicate"):
        engine.add(request("b", text("b", 10)))
        engine.add(request("b", text("b", 10)))


def test_idle_step_takes_no_time() -> None:
    out = Engine(TINY).step(5.0)
    assert out.duration_s == 0.0 and out.new_tokens == {} and out.finished == []


def test_throughput_of_the_model_itself() -> None:
    """Guard against per-token block loops: 2000 requests x 100 output tokens must take about a
    second of CPU (the simulator runs 4000-request traces through 8 engines in seconds)."""
    engine = Engine(H100_80GB)
    shared = text("sys", 512)
    requests = [request(f"r{i}", shared + text(f"u{i}", 300), max_tokens=100) for i in range(2000)]
    started = time.perf_counter()
    now_s = 0.0
    finished = 0
    for i, req in enumerate(requests):
        engine.add(dataclasses.replace(req, arrival_s=now_s))
        if i % 20 == 19:
            for _ in range(10):
                out = engine.step(now_s)
                now_s += out.duration_s
                finished += len(out.finished)
    done, _ = run(engine, now_s)
    elapsed = time.perf_counter() - started
    assert finished + len(done) == 2000
    assert engine.stats().prefix_hits_tokens >= 1980 * 512  # the first 20 arrive together and all miss
    assert elapsed < 5.0, f"engine too slow: {elapsed:.2f}s"


def test_l4_queues_long_prompts_sooner_than_h100() -> None:
    engines = {p.name: Engine(p) for p in (H100_80GB, L4_24GB)}
    for engine in engines.values():
        for i in range(40):
            engine.add(request(f"r{i}", text(f"r{i}", 2000), max_tokens=200))
        engine.step(0.0)
    assert engines["l4"].stats().waiting > engines["h100"].stats().waiting
