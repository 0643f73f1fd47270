"""Trace readers on real rows from ../shared/traces/ and on malformed rows written into tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetgate.core.tokens import CHARS_PER_TOKEN, count_tokens
from fleetgate.loadgen.synthtext import BLOCK_TOKENS, filler_text
from fleetgate.loadgen.traces import (
    FORMATS,
    SyntheticSpec,
    TraceResult,
    compress_idle,
    detect_time_unit,
    read_trace,
    synthetic_shared_prefix,
)

TRACES = Path(__file__).resolve().parents[4] / "shared" / "traces"
if not TRACES.is_dir():  # the checkout may sit elsewhere; the shared folder is fixed
    TRACES = Path("/work/shared/traces")
MOONCAKE = TRACES / "mooncake" / "synthetic_trace.jsonl"
AZURE = TRACES / "azure_2023" / "AzureLLMInferenceTrace_conv.csv"
AGENTS = TRACES / "agent_sessions"
AIBRIX = TRACES / "aibrix" / "8min_up_and_down.jsonl"


@pytest.fixture
def shared_traces() -> Path:
    """The real traces these readers are proven on: missing ones fail the test, never skip it."""
    assert MOONCAKE.exists(), f"the shared traces are not at {TRACES} (the checkout needs ../shared beside it)"
    return TRACES


def _assert_well_formed(result: TraceResult) -> None:
    arrivals = [r.arrival_s for r in result.requests]
    assert arrivals[0] == 0.0
    assert arrivals == sorted(arrivals)
    for request in result.requests:
        assert (request.prompt is None) != (request.messages is None)
        assert request.output_tokens >= 1
        assert request.input_tokens >= 1


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- real rows ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("shared_traces")
def test_mooncake_real_rows_share_blocks_byte_for_byte() -> None:
    result = read_trace(MOONCAKE, "mooncake", limit=50)
    _assert_well_formed(result)
    assert len(result.requests) == 50 and not result.errors
    raw = [json.loads(line) for line in MOONCAKE.open().readlines()[:50]]
    for request, row in zip(result.requests, raw):
        assert len(request.prompt) == row["input_length"] * CHARS_PER_TOKEN
        assert request.input_tokens == count_tokens(request.prompt) == row["input_length"]
        assert request.output_tokens == row["output_length"]
        assert request.arrival_s == pytest.approx((row["timestamp"] - raw[0]["timestamp"]) / 1000)
    # two rows that share their leading hash ids share exactly that many 2048-char blocks
    by_first: dict[int, list[int]] = {}
    for index, row in enumerate(raw):
        by_first.setdefault(row["hash_ids"][0], []).append(index)
    i, j = next(v for v in by_first.values() if len(v) > 1)[:2]
    common = 0
    for a, b in zip(raw[i]["hash_ids"], raw[j]["hash_ids"]):
        if a != b:
            break
        common += 1
    block_chars = BLOCK_TOKENS * CHARS_PER_TOKEN
    pa, pb = result.requests[i].prompt, result.requests[j].prompt
    shared = min(common * block_chars, len(pa), len(pb))
    assert pa[:shared] == pb[:shared]
    if common * block_chars < min(len(pa), len(pb)):
        assert pa[: shared + block_chars] != pb[: shared + block_chars]


@pytest.mark.usefixtures("shared_traces")
def test_mooncake_block_text_is_deterministic_across_reads() -> None:
    first = read_trace(MOONCAKE, "mooncake", limit=3).requests
    again = read_trace(MOONCAKE, "mooncake", limit=3).requests
    assert [r.prompt for r in first] == [r.prompt for r in again]
    assert first[0].prompt.isascii()


@pytest.mark.usefixtures("shared_traces")
def test_azure_2023_real_rows() -> None:
    result = read_trace(AZURE, "azure", limit=100)
    _assert_well_formed(result)
    assert not result.errors
    first = result.requests[:2]
    assert (first[0].input_tokens, first[0].output_tokens) == (374, 44)
    assert (first[1].input_tokens, first[1].output_tokens) == (396, 109)
    assert first[1].arrival_s == pytest.approx(50.9951690 - 46.6805900)
    assert len(first[1].prompt) == 396 * CHARS_PER_TOKEN
    assert first[0].prompt[:64] != first[1].prompt[:64]  # lengths-only: no false prefix sharing


@pytest.mark.usefixtures("shared_traces")
def test_agent_sessions_sorted_by_timestamp_in_microseconds() -> None:
    result = read_trace(AGENTS, "openai-jsonl")
    _assert_well_formed(result)
    assert not result.errors
    assert len(result.requests) > 800
    sessions: dict[str, list] = {}
    for request in result.requests:
        assert request.messages is not None and request.session_id
        sessions.setdefault(request.session_id, []).append(request)
    raw_sessions = {json.loads(line)["session_id"] for f in AGENTS.rglob("*.jsonl") for line in f.open()}
    assert set(sessions) == raw_sessions
    # consecutive prompts of an agent session share long prefixes; sessions last under a minute
    turns = max(sessions.values(), key=len)
    assert turns[-1].arrival_s - turns[0].arrival_s < 120
    a, b = turns[1].messages[0]["content"], turns[2].messages[0]["content"]
    assert b.startswith(a[:1000])


@pytest.mark.usefixtures("shared_traces")
def test_aibrix_groups_arrive_together_and_zero_outputs_ask_for_one_token() -> None:
    result = read_trace(AIBRIX, "aibrix")
    _assert_well_formed(result)
    assert not result.errors
    assert len(result.requests) == 2026
    assert result.requests[-1].arrival_s == pytest.approx((461909 - 6011) / 1000)
    arrivals = [r.arrival_s for r in result.requests]
    assert len(set(arrivals)) == 2022  # four lines hold two prompts each


# --- formats on rows written in their published schema -----------------------------------------


BURSTGPT_ROWS = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
5,ChatGPT,472,18,490,Conversation log
45,ChatGPT,1087,0,1087,Conversation log
118,GPT-4,417,294,711,API log
120,ChatGPT,abc,10,10,Conversation log
121,ChatGPT,30,12,42
"""


@pytest.mark.parametrize(
    ("drop_failed", "kept", "dropped"),
    [(True, [(0.0, 472, 18), (113.0, 417, 294)], 1), (False, [(0.0, 472, 18), (40.0, 1087, 1), (113.0, 417, 294)], 0)],
)
def test_burstgpt_rows_and_failed_flag(tmp_path: Path, drop_failed: bool, kept: list, dropped: int) -> None:
    path = _write(tmp_path, "burst.csv", BURSTGPT_ROWS)
    result = read_trace(path, "burstgpt", drop_failed=drop_failed)
    assert [(r.arrival_s, r.input_tokens, r.output_tokens) for r in result.requests] == kept
    assert result.dropped_failed == dropped
    assert [line for line, _ in result.errors] == [5, 6]
    assert "Request tokens" in result.errors[0][1]


def test_burstgpt_failure_log_type_is_dropped(tmp_path: Path) -> None:
    path = _write(tmp_path, "b.csv", "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n1,M,5,5,10,Failure\n")
    assert read_trace(path, "burstgpt").dropped_failed == 1


@pytest.mark.parametrize(
    "header_and_rows",
    [
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,10,2\n2023-11-16 18:15:47.1805900,20,3\n",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00.009930+00:00,10,2\n2024-05-10 00:00:00.509930+00:00,20,3\n",
        "timestamp,context_tokens,generated_tokens\n100.0,10,2\n100.5,20,3\n",
    ],
    ids=["azure-2023", "azure-2024", "lowercase-seconds"],
)
def test_azure_column_names_and_timestamp_styles(tmp_path: Path, header_and_rows: str) -> None:
    result = read_trace(_write(tmp_path, "a.csv", header_and_rows), "azure")
    assert not result.errors
    assert [(r.input_tokens, r.output_tokens) for r in result.requests] == [(10, 2), (20, 3)]
    assert result.requests[1].arrival_s == pytest.approx(0.5)


def test_openai_jsonl_fields_units_and_order(tmp_path: Path) -> None:
    lines = [
        {"timestamp": 3.5, "session_id": "s1", "messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 7},
        {"timestamp": 1.0, "input": "hello there", "output": "a" * 17},
        {"timestamp": 2.0, "prompt": "p" * 8, "output_tokens": 3},
    ]
    path = _write(tmp_path, "c.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    requests = read_trace(path, "openai-jsonl").requests
    assert [r.arrival_s for r in requests] == [0.0, 1.0, 2.5]
    assert requests[0].messages == ({"role": "user", "content": "hello there"},)
    assert requests[0].output_tokens == 5
    assert (requests[1].prompt, requests[1].output_tokens) == ("p" * 8, 3)
    assert (requests[2].session_id, requests[2].input_tokens, requests[2].output_tokens) == ("s1", 10, 7)
    in_ms = read_trace(path, "openai-jsonl", time_unit="ms").requests
    assert in_ms[-1].arrival_s == pytest.approx(0.0025)


@pytest.mark.parametrize(
    ("timestamps", "unit"), [([1.76e15], "us"), ([1.76e12], "ms"), ([1.76e9], "s"), ([0.0, 12.5], "s"), ([], "s")]
)
def test_detect_time_unit(timestamps: list[float], unit: str) -> None:
    assert detect_time_unit(timestamps) == unit


# --- malformed rows: reported with line numbers, never a crash ----------------------------------


MALFORMED = [
    (
        "mooncake",
        "m.jsonl",
        '{"timestamp": 0, "input_length": 600, "output_length": 2, "hash_ids": [1, 2]}\n'
        "{not json\n"
        '{"timestamp": 5, "input_length": 600, "output_length": 2}\n'
        '{"timestamp": 6, "input_length": -3, "output_length": 2, "hash_ids": [1]}\n'
        "\n"
        '[1, 2]\n'
        '{"timestamp": "soon", "input_length": 10, "output_length": 2, "hash_ids": [1]}\n',
        [2, 3, 4, 6, 7],
    ),
    (
        "aibrix",
        "g.jsonl",
        '{"timestamp": 10, "requests": [{"Prompt Length": 2, "Output Length": 3, "prompt": "hi there"}]}\n'
        '{"timestamp": 11, "requests": []}\n'
        '{"timestamp": 12, "requests": [{"Output Length": 3}]}\n'
        '{"timestamp": 13, "requests": [{"prompt": "x", "Output Length": "many"}]}\n',
        [2, 3, 4],
    ),
    (
        "openai-jsonl",
        "o.jsonl",
        '{"timestamp": 1, "input": "hi", "output": "yo"}\n'
        '{"timestamp": 2, "output": "yo"}\n'
        '{"timestamp": 3, "input": "hi"}\n'
        '{"input": "hi", "output": "yo"}\n'
        '{"timestamp": 4, "input": "hi", "max_tokens": 0}\n',
        [2, 3, 4, 5],
    ),
    (
        "azure",
        "z.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "yesterday,1,1\n"
        "2023-11-16 18:15:47.0,3.5,1\n"
        "2023-11-16 18:15:48.0,10\n"
        "2023-11-16 18:15:49.0,10,0\n",
        [3, 4, 5, 6],
    ),
]


@pytest.mark.parametrize(("fmt", "name", "text", "bad_lines"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_rows_are_reported_with_line_numbers(
    tmp_path: Path, fmt: str, name: str, text: str, bad_lines: list[int]
) -> None:
    result = read_trace(_write(tmp_path, name, text), fmt)
    assert [line for line, _ in result.errors] == bad_lines
    assert all(message for _, message in result.errors)
    assert len(result.requests) == 1


def test_directory_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub", "a.jsonl", '{"timestamp": 1, "input": "hi", "output": "yo"}\n{oops\n')
    result = read_trace(tmp_path, "openai-jsonl")
    assert result.errors == ((2, result.errors[0][1]),)
    assert result.errors[0][1].startswith("sub/a.jsonl: ")


def test_missing_column_and_empty_csv(tmp_path: Path) -> None:
    result = read_trace(_write(tmp_path, "x.csv", "TIMESTAMP,Tokens\n1,2\n"), "azure")
    assert result.requests == () and result.errors[0][0] == 2 and "contexttokens" in result.errors[0][1]
    assert read_trace(_write(tmp_path, "e.csv", ""), "azure").errors == ((0, "empty file"),)


def test_unknown_format_and_unit_raise() -> None:
    with pytest.raises(ValueError, match="unknown trace format"):
        read_trace("x", "sharegpt")
    with pytest.raises(ValueError, match="unknown time unit"):
        read_trace("x", "openai-jsonl", time_unit="ns")
    assert "mooncake" in FORMATS


# --- synthetic workload and transforms ----------------------------------------------------------


def test_synthetic_shared_prefix_is_seeded_and_shares_group_prefixes() -> None:
    spec = SyntheticSpec.parse("groups=3,prefix=128,suffix=16,output=5,rate=50,count=60,seed=7")
    result = synthetic_shared_prefix(spec)
    again = read_trace("groups=3,prefix=128,suffix=16,output=5,rate=50,count=60,seed=7", "synthetic")
    assert result.requests == again.requests
    _assert_well_formed(result)
    prefixes = {r.prompt[: 128 * CHARS_PER_TOKEN] for r in result.requests}
    assert len(prefixes) == 3
    assert len({r.prompt for r in result.requests}) == 60
    assert all(r.input_tokens == count_tokens(r.prompt) == 144 for r in result.requests)
    duration_s = result.requests[-1].arrival_s
    assert 59 / duration_s == pytest.approx(50, rel=0.35)  # Poisson arrivals at the asked rate
    assert len(read_trace("count=60", "synthetic", limit=10).requests) == 10


@pytest.mark.parametrize("spec", ["groups=0", "colour=red", "rate=-1", "groups", "count=abc"])
def test_synthetic_spec_errors(spec: str) -> None:
    with pytest.raises(ValueError):
        SyntheticSpec.parse(spec)


def test_compress_idle_caps_gaps_and_keeps_bursts() -> None:
    spec = SyntheticSpec(count=3)
    base = synthetic_shared_prefix(spec)
    stretched = TraceResult(
        tuple(r.__class__(t, r.prompt, None, 1) for r, t in zip(base.requests, (0.0, 0.5, 100.0))), ()
    )
    assert [r.arrival_s for r in compress_idle(stretched, 2.0).requests] == [0.0, 0.5, 2.5]


def test_filler_text_is_deterministic_and_sized() -> None:
    assert filler_text("k", 5) == filler_text("k", 5)
    assert len(filler_text("k", 5)) == 20 and filler_text("k", 0) == ""
    assert filler_text("k", 5) != filler_text("j", 5)
