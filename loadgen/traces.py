"""Readers that turn public LLM workload traces into one request list the replayer and simulator share.

Every reader returns requests sorted by arrival with the first at 0 s, and reports a malformed row
as (line number, message) in `TraceResult.errors` instead of raising: one bad line in a million-row
trace must not stop a benchmark. Rows are parsed into cheap records first and prompt text is only
built for the requests kept after sorting and `limit`, because Mooncake prompts average 60 KB.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from fleetgate.core.tokens import count_tokens
from fleetgate.loadgen.synthtext import BlockTexts, filler_text

FORMATS = ("mooncake", "azure", "burstgpt", "openai-jsonl", "aibrix", "synthetic")
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


@dataclass(frozen=True, slots=True)
class TraceRequest:
    arrival_s: float  # from the trace start (first request at 0)
    prompt: str | None  # completions-style text, or None when messages is set
    messages: tuple[dict, ...] | None
    output_tokens: int
    session_id: str | None = None
    input_tokens: int = 0  # tokens of the prompt (stand-in tokenizer: 4 chars/token)


@dataclass(frozen=True, slots=True)
class TraceResult:
    requests: tuple[TraceRequest, ...]
    errors: tuple[tuple[int, str], ...]  # (line number, what is wrong); line 0 means the file as a whole
    dropped_failed: int = 0  # rows the trace marks as failed requests, left out by `drop_failed`


class RowError(ValueError):
    """A row that cannot become a request; the reader records it with its line number."""


Make = Callable[[float], TraceRequest]
"""Builds the request once its arrival (seconds from trace start) is known."""


@dataclass(frozen=True, slots=True)
class _Row:
    time: float  # raw trace time in the trace's unit, or seconds for CSV traces
    make: Make


@dataclass
class _Collector:
    """Rows and errors of one read, kept in file order."""

    rows: list[_Row] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)
    dropped_failed: int = 0


def read_trace(
    path: str | Path,
    fmt: str,
    *,
    limit: int | None = None,
    drop_failed: bool = True,
    time_unit: str | None = None,
) -> TraceResult:
    """Read a trace file (or a directory of JSONL files) of format `fmt` (one of FORMATS).

    `time_unit` ("s", "ms", "us") overrides the timestamp unit of JSON traces; by default Mooncake
    and AIBrix are in ms and OpenAI-style JSONL is detected from the magnitude of its timestamps.
    For "synthetic", `path` is a spec such as "groups=8,prefix_tokens=2048,rate=20,count=500".
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown trace format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if time_unit is not None and time_unit not in TIME_UNITS:
        raise ValueError(f"unknown time unit {time_unit!r}; expected one of {', '.join(TIME_UNITS)}")
    if fmt == "synthetic":
        return synthetic_shared_prefix(SyntheticSpec.parse(str(path)), limit=limit)
    path = Path(path)
    collected = _Collector()
    scale = 1.0
    if fmt in ("azure", "burstgpt"):
        reader = _azure_row if fmt == "azure" else _burstgpt_row(drop_failed)
        _read_csv(path, fmt, reader, collected)
    else:
        parser = {"mooncake": _mooncake_rows(), "aibrix": _aibrix_rows, "openai-jsonl": _openai_rows}[fmt]
        _read_jsonl(path, fmt, parser, collected)
        default_unit = "ms" if fmt in ("mooncake", "aibrix") else None
        unit = time_unit or default_unit or detect_time_unit([row.time for row in collected.rows])
        scale = TIME_UNITS[unit]
    return _finish(collected, scale, limit)


def compress_idle(result: TraceResult, max_gap_s: float) -> TraceResult:
    """Shorten every gap between consecutive arrivals to at most `max_gap_s`.

    Traces stitched from separate collection runs (the agent sessions span 44 h with one idle gap
    of 44 h) replay in minutes this way while bursts inside each run keep their real timing.
    """
    if max_gap_s < 0:
        raise ValueError("max_gap_s must be >= 0")
    shifted: list[TraceRequest] = []
    removed_s = 0.0
    previous_s = 0.0
    for request in result.requests:
        removed_s += max(request.arrival_s - previous_s - max_gap_s, 0.0)
        previous_s = request.arrival_s
        shifted.append(_with_arrival(request, request.arrival_s - removed_s))
    return TraceResult(tuple(shifted), result.errors, result.dropped_failed)


def detect_time_unit(timestamps: list[float]) -> str:
    """Guess the unit of epoch timestamps from their size (2020s epoch: 1.7e9 s, 1.7e12 ms, 1.7e15 us).

    Relative timestamps in ms or us over short spans look like seconds: pass the unit explicitly there.
    """
    biggest = max((abs(t) for t in timestamps), default=0.0)
    if biggest >= 1e14:
        return "us"
    if biggest >= 1e11:
        return "ms"
    return "s"


def _finish(collected: _Collector, scale: float, limit: int | None) -> TraceResult:
    rows = sorted(collected.rows, key=lambda row: row.time)  # stable: equal times keep file order
    if limit is not None:
        rows = rows[: max(limit, 0)]
    start = rows[0].time if rows else 0.0
    requests = tuple(row.make((row.time - start) * scale) for row in rows)
    return TraceResult(requests, tuple(collected.errors), collected.dropped_failed)


# --- helpers shared by the readers ---------------------------------------------------------------


def _int_field(obj: dict[str, Any], name: str, minimum: int = 0) -> int:
    if name not in obj:
        raise RowError(f"missing {name!r}")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RowError(f"{name!r} is not a number: {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise RowError(f"{name!r} is not a number: {value!r}") from None
    if number != number or number != int(number):
        raise RowError(f"{name!r} is not a whole number: {value!r}")
    if number < minimum:
        raise RowError(f"{name!r} is below {minimum}: {value!r}")
    return int(number)


def _time_field(obj: dict[str, Any], name: str) -> float:
    value = obj.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RowError(f"{name!r} is missing or not a number: {value!r}")
    if value != value or value < 0:
        raise RowError(f"{name!r} is negative or NaN: {value!r}")
    return float(value)


def _read_jsonl(path: Path, fmt: str, parse: Callable[[dict, str], list[_Row]], out: _Collector) -> None:
    """Parse each JSON object line; a directory means every *.jsonl file below it (errors name the file)."""
    files = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    for file in files:
        prefix = f"{file.relative_to(path)}: " if path.is_dir() else ""
        with file.open("r", encoding="utf-8", errors="replace") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise RowError("not a JSON object")
                    out.rows.extend(parse(obj, f"{fmt}:{file.name}:{line_no}"))
                except (RowError, ValueError) as exc:
                    out.errors.append((line_no, f"{prefix}{exc}"))


def _normalize(name: str) -> str:
    return name.strip().lower().replace("_", "").replace(" ", "")


def _read_csv(path: Path, fmt: str, parse: Callable[[dict, str], _Row | None], out: _Collector) -> None:
    """Parse CSV rows keyed by normalized column names ("Request tokens" -> "requesttokens")."""
    with path.open("r", encoding="utf-8", errors="replace", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            out.errors.append((0, "empty file"))
            return
        columns = [_normalize(name) for name in header]
        for cells in reader:
            line_no = reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(columns):
                out.errors.append((line_no, f"{len(cells)} cells, header has {len(columns)}"))
                continue
            try:
                row = parse(dict(zip(columns, cells)), f"{fmt}:{path.name}:{line_no}")
            except RowError as exc:
                out.errors.append((line_no, str(exc)))
                continue
            if row is None:
                out.dropped_failed += 1
            else:
                out.rows.append(row)


def _column(row: dict[str, str], *names: str) -> str:
    for name in names:
        if name in row:
            return row[name]
    raise RowError(f"missing column {names[0]!r}")


def _lengths_only(input_tokens: int, output_tokens: int, key: str) -> Make:
    """A request whose text is unique filler of the traced length (no false prefix sharing)."""

    def make(arrival_s: float) -> TraceRequest:
        prompt = filler_text(key, input_tokens)
        return TraceRequest(arrival_s, prompt, None, output_tokens, None, input_tokens)

    return make


# --- formats -------------------------------------------------------------------------------------


def _mooncake_rows() -> Callable[[dict, str], list[_Row]]:
    """Mooncake: `hash_ids` name shared 512-token blocks; the same id gives the same text in every request."""
    blocks = BlockTexts()

    def parse(obj: dict, key: str) -> list[_Row]:
        time = _time_field(obj, "timestamp")
        input_tokens = _int_field(obj, "input_length", 1)
        output_tokens = _int_field(obj, "output_length", 1)
        hash_ids = obj.get("hash_ids")
        if not isinstance(hash_ids, list) or not all(isinstance(h, int) and not isinstance(h, bool) for h in hash_ids):
            raise RowError("'hash_ids' is missing or not a list of integers")

        def make(arrival_s: float) -> TraceRequest:
            prompt = blocks.prompt(hash_ids, input_tokens, key)
            return TraceRequest(arrival_s, prompt, None, output_tokens, None, input_tokens)

        return [_Row(time, make)]

    return parse


def _aibrix_rows(obj: dict, key: str) -> list[_Row]:
    """AIBrix: one line per arrival instant holding one or more ShareGPT prompts sent together."""
    time = _time_field(obj, "timestamp")
    group = obj.get("requests")
    if not isinstance(group, list) or not group:
        raise RowError("'requests' is missing or empty")
    rows = []
    for index, item in enumerate(group):
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise RowError(f"requests[{index}] has no 'prompt' text")
        messages = ({"role": "user", "content": item["prompt"]},)
        output_tokens = max(_int_field(item, "Output Length", 0), 1)  # a few rows say 0: ask for 1
        request = TraceRequest(0.0, None, messages, output_tokens, None, count_tokens(item["prompt"]))
        rows.append(_Row(time, _at(request)))
    return rows


def _at(request: TraceRequest) -> Make:
    return lambda arrival_s: _with_arrival(request, arrival_s)


def _with_arrival(request: TraceRequest, arrival_s: float) -> TraceRequest:
    values = {f.name: getattr(request, f.name) for f in fields(TraceRequest)}
    values["arrival_s"] = arrival_s
    return TraceRequest(**values)


def _messages_tokens(messages: tuple[dict, ...]) -> int:
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            total += count_tokens(content)
        elif isinstance(content, list):  # content parts: count the text ones
            total += sum(count_tokens(p.get("text", "")) for p in content if isinstance(p, dict))
    return total


def _openai_messages(obj: dict) -> tuple[str | None, tuple[dict, ...] | None]:
    """`messages`, or `input` (a string becomes one user message, a list is messages), or `prompt`."""
    messages = obj.get("messages", obj.get("input"))
    if isinstance(messages, str):
        return None, ({"role": "user", "content": messages},)
    if isinstance(messages, list) and messages and all(isinstance(m, dict) and "role" in m for m in messages):
        return None, tuple(messages)
    if isinstance(obj.get("prompt"), str):
        return obj["prompt"], None
    raise RowError("no 'messages' list, 'input' or 'prompt' text")


def _openai_output_tokens(obj: dict) -> int:
    for name in ("output_tokens", "max_tokens"):
        if name in obj:
            return _int_field(obj, name, 1)
    output = obj.get("output")
    if isinstance(output, str):
        return max(count_tokens(output), 1)
    raise RowError("no output length: expected 'output_tokens', 'max_tokens' or 'output' text")


def _openai_rows(obj: dict, key: str) -> list[_Row]:
    """OpenAI-style chat JSONL (agent sessions): timestamp, session_id, messages or input, output."""
    time = _time_field(obj, "timestamp")
    prompt, messages = _openai_messages(obj)
    output_tokens = _openai_output_tokens(obj)
    session = obj.get("session_id")
    input_tokens = count_tokens(prompt) if prompt is not None else _messages_tokens(messages or ())
    request = TraceRequest(0.0, prompt, messages, output_tokens, None if session is None else str(session), input_tokens)
    return [_Row(time, _at(request))]


def _azure_time_s(text: str) -> float:
    """Azure TIMESTAMP: ISO date-time (2023: naive, 7 fractional digits; 2024: with +00:00) or seconds."""
    text = text.strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise RowError(f"TIMESTAMP is not a date-time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _azure_row(row: dict[str, str], key: str) -> _Row:
    """Azure LLM inference trace (2023 and 2024): TIMESTAMP, ContextTokens, GeneratedTokens."""
    time = _azure_time_s(_column(row, "timestamp"))
    values = {
        "input": _column(row, "contexttokens", "inputtokens", "prompttokens"),
        "output": _column(row, "generatedtokens", "outputtokens", "completiontokens"),
    }
    input_tokens = _int_field(values, "input", 1)
    output_tokens = _int_field(values, "output", 1)
    return _Row(time, _lengths_only(input_tokens, output_tokens, key))


def _burstgpt_row(drop_failed: bool) -> Callable[[dict[str, str], str], _Row | None]:
    """BurstGPT: Timestamp (s), Model, Request tokens, Response tokens, Total tokens, Log Type.

    A failed request has 0 response tokens (or a Log Type naming a failure); kept rows of that kind
    are replayed asking for 1 token, since an arrival is still load on the router.
    """

    def parse(row: dict[str, str], key: str) -> _Row | None:
        values = {
            "Timestamp": _column(row, "timestamp"),
            "Request tokens": _column(row, "requesttokens"),
            "Response tokens": _column(row, "responsetokens"),
        }
        try:
            time = float(values["Timestamp"])
        except ValueError:
            raise RowError(f"'Timestamp' is not a number: {values['Timestamp']!r}") from None
        if time != time or time < 0:
            raise RowError(f"'Timestamp' is negative or NaN: {values['Timestamp']!r}")
        input_tokens = _int_field(values, "Request tokens", 0)
        output_tokens = _int_field(values, "Response tokens", 0)
        failed = output_tokens == 0 or "fail" in row.get("logtype", "").lower()
        if failed and drop_failed:
            return None
        return _Row(time, _lengths_only(max(input_tokens, 1), max(output_tokens, 1), key))

    return parse


# --- synthetic shared-prefix workload ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SyntheticSpec:
    """Requests in `groups` that each share a `prefix_tokens` prefix (a system prompt, a document)."""

    groups: int = 8
    prefix_tokens: int = 2048
    suffix_tokens: int = 128
    output_tokens: int = 64
    rate_per_s: float = 10.0  # mean arrival rate; gaps are exponential (Poisson arrivals)
    count: int = 200
    seed: int = 0

    @classmethod
    def parse(cls, spec: str) -> "SyntheticSpec":
        """"groups=8,prefix_tokens=2048,rate=20" -> spec; unknown keys and bad values raise ValueError."""
        aliases = {"rate": "rate_per_s", "prefix": "prefix_tokens", "suffix": "suffix_tokens", "output": "output_tokens"}
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, text = part.partition("=")
            name = aliases.get(name.strip(), name.strip())
            if not sep or name not in known:
                raise ValueError(f"bad synthetic spec item {part!r}; keys: {', '.join(known)}")
            values[name] = float(text) if name == "rate_per_s" else int(text)
        made = cls(**values)
        if made.groups < 1 or made.count < 0 or made.rate_per_s <= 0 or made.output_tokens < 1:
            raise ValueError(f"synthetic spec out of range: {made}")
        if made.prefix_tokens < 0 or made.suffix_tokens < 0:
            raise ValueError(f"synthetic spec out of range: {made}")
        return made


def synthetic_shared_prefix(spec: SyntheticSpec, *, limit: int | None = None) -> TraceResult:
    """A seeded shared-prefix workload: same spec, same requests, byte for byte."""
    rng = random.Random(spec.seed)
    count = spec.count if limit is None else min(spec.count, max(limit, 0))
    prefixes = [filler_text(f"synthetic:{spec.seed}:prefix:{g}", spec.prefix_tokens) for g in range(spec.groups)]
    requests = []
    arrival_s = 0.0
    for index in range(count):
        if index:
            arrival_s += rng.expovariate(spec.rate_per_s)
        group = rng.randrange(spec.groups)
        prompt = prefixes[group] + filler_text(f"synthetic:{spec.seed}:suffix:{index}", spec.suffix_tokens)
        requests.append(
            TraceRequest(arrival_s, prompt, None, spec.output_tokens, None, spec.prefix_tokens + spec.suffix_tokens)
        )
    return TraceResult(tuple(requests), ())

