"""Run reports: per-request results on disk, a summary computed by one pure function, a terminal table.

A run directory holds `results.jsonl` (one RequestResult per line), `summary.json` (summary plus
run metadata) and PNG plots (loadgen/plots.py). `summarize` is pure so its numbers are checked
against a hand-computed run in tests; everything else here is I/O and formatting.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Iterable

from fleetgate.loadgen.replay import RequestResult

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
PERCENTILES = (50, 90, 99)


def percentile(values: list[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = p / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _distribution(values: list[float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {f"p{p}": percentile(values, p) for p in PERCENTILES}
    out["mean"] = sum(values) / len(values) if values else None
    return out


def meets_slo(result: RequestResult, ttft_slo_ms: float, tpot_slo_ms: float | None) -> bool:
    """Answered without error, first token within the TTFT SLO, and (if set) decode within the TPOT SLO."""
    if result.error is not None or result.ttft_ms is None or result.ttft_ms > ttft_slo_ms:
        return False
    return tpot_slo_ms is None or result.tpot_ms is None or result.tpot_ms <= tpot_slo_ms


def _hit_ratio(results: Iterable[RequestResult]) -> float | None:
    """Cached / prompt tokens over requests whose target reported both (None when none did)."""
    prompt = cached = 0
    for r in results:
        if r.prompt_tokens is not None and r.cached_tokens is not None:
            prompt += r.prompt_tokens
            cached += r.cached_tokens
    return cached / prompt if prompt else None


def _groups(results: list[RequestResult], key: str) -> dict[str, dict[str, Any]]:
    """Per pool / per instance: request count, share of the requests that named one, hit ratio, TTFT p50."""
    members: dict[str, list[RequestResult]] = {}
    for r in results:
        name = getattr(r, key)
        if name is not None:
            members.setdefault(name, []).append(r)
    total = sum(len(group) for group in members.values())
    return {
        name: {
            "requests": len(group),
            "share_ratio": len(group) / total,
            "prefix_hit_ratio": _hit_ratio(group),
            "ttft_p50_ms": percentile([r.ttft_ms for r in group if r.ttft_ms is not None], 50),
        }
        for name, group in sorted(members.items())
    }


def _estimate_error(results: list[RequestResult]) -> dict[str, float | int | None]:
    """|observed - estimated| TTFT where the gateway sent its estimate (x-fleetgate-estimated-ttft-ms)."""
    errors = [abs(r.ttft_ms - r.estimated_ttft_ms) for r in results
              if r.ttft_ms is not None and r.estimated_ttft_ms is not None]
    return {"requests": len(errors), "p50": percentile(errors, 50), "p90": percentile(errors, 90)}


def summarize(results: list[RequestResult], *, ttft_slo_ms: float, tpot_slo_ms: float | None = None) -> dict[str, Any]:
    """The numbers of one run. Attainment counts every scheduled request (dropped and failed ones miss
    the SLO); goodput is SLO-meeting requests per second of the run (first send to last answer)."""
    sent = [r for r in results if r.sent_s is not None]
    ok = [r for r in sent if r.error is None]
    met = sum(meets_slo(r, ttft_slo_ms, tpot_slo_ms) for r in results)
    ends = [r.sent_s + r.e2e_ms / 1000 for r in sent if r.e2e_ms is not None]
    duration_s = max(ends) - min(r.sent_s for r in sent) if ends else 0.0
    scheduled = [r.scheduled_s for r in results]
    offered_span_s = max(scheduled) - min(scheduled) if scheduled else 0.0
    errors = Counter(r.error for r in results if r.error is not None and r.error != "dropped")
    prompt = sum(r.prompt_tokens or 0 for r in ok)
    return {
        "requests": len(results),
        "completed": len(ok),
        "dropped": sum(r.error == "dropped" for r in results),
        "errors": dict(sorted(errors.items())),
        "duration_s": duration_s,
        "offered_rate_per_s": (len(results) - 1) / offered_span_s if offered_span_s > 0 else None,
        "throughput_per_s": len(ok) / duration_s if duration_s > 0 else None,
        "ttft_ms": _distribution([r.ttft_ms for r in ok if r.ttft_ms is not None]),
        "tpot_ms": _distribution([r.tpot_ms for r in ok if r.tpot_ms is not None]),
        "e2e_ms": _distribution([r.e2e_ms for r in ok if r.e2e_ms is not None]),
        "send_lag_ms": _distribution([(r.sent_s - r.scheduled_s) * 1000 for r in sent]),
        "ttft_estimate_error_ms": _estimate_error(ok),
        "slo": {
            "ttft_ms": ttft_slo_ms,
            "tpot_ms": tpot_slo_ms,
            "met": met,
            "attainment_ratio": met / len(results) if results else None,
            "goodput_per_s": met / duration_s if duration_s > 0 else None,
        },
        "tokens": {
            "prompt": prompt,
            "cached": sum(r.cached_tokens or 0 for r in ok),
            "completion": sum(r.completion_tokens or 0 for r in ok),
            "prefix_hit_ratio": _hit_ratio(ok),
        },
        "pools": _groups(sent, "pool"),
        "instances": _groups(sent, "instance"),
    }


# --- run directories ----------------------------------------------------------------------------


def write_results(out_dir: Path, results: list[RequestResult]) -> Path:
    path = out_dir / RESULTS_FILE
    with path.open("w", encoding="utf-8") as handle:
        for result in results:
            handle.write(json.dumps(asdict(result), separators=(",", ":")) + "\n")
    return path


def load_results(run_dir: Path) -> list[RequestResult]:
    names = {f.name for f in fields(RequestResult)}
    with (run_dir / RESULTS_FILE).open("r", encoding="utf-8") as handle:
        return [RequestResult(**{k: v for k, v in json.loads(line).items() if k in names}) for line in handle if line.strip()]


def load_summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))


def write_run(
    out_dir: Path,
    results: list[RequestResult],
    meta: dict[str, Any],
    *,
    ttft_slo_ms: float,
    tpot_slo_ms: float | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """results.jsonl + summary.json (+ plots); returns the summary document."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_results(out_dir, results)
    document = {"run": meta, **summarize(results, ttft_slo_ms=ttft_slo_ms, tpot_slo_ms=tpot_slo_ms)}
    if plots:
        from fleetgate.loadgen.plots import plot_run

        document["plots"] = [p.name for p in plot_run(out_dir, results, document)]
    (out_dir / SUMMARY_FILE).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return document


# --- terminal table -----------------------------------------------------------------------------


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "ms":
        return f"{value:.0f}" if value >= 100 else f"{value:.1f}"
    if kind == "ratio":
        return f"{value * 100:.1f}%"
    if kind == "rate":
        return f"{value:.2f}"
    return str(value)


def _rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    slo = summary["slo"]
    slo_name = f"TTFT<={slo['ttft_ms']:.0f}" + (f", TPOT<={slo['tpot_ms']:.0f}" if slo.get("tpot_ms") else "")
    rows = [
        ("requests", _fmt(summary["requests"], "n")),
        ("completed", _fmt(summary["completed"], "n")),
        ("dropped (cap)", _fmt(summary["dropped"], "n")),
        ("errors", ", ".join(f"{k}={v}" for k, v in summary["errors"].items()) or "0"),
        ("offered req/s", _fmt(summary["offered_rate_per_s"], "rate")),
        ("throughput req/s", _fmt(summary["throughput_per_s"], "rate")),
    ]
    for metric in ("ttft_ms", "tpot_ms", "e2e_ms"):
        for p in PERCENTILES:
            rows.append((f"{metric[:-3].upper()} p{p} ms", _fmt(summary[metric][f"p{p}"], "ms")))
    rows += [
        ("SLO (ms)", slo_name),
        ("SLO attainment", _fmt(slo["attainment_ratio"], "ratio")),
        ("goodput req/s (meets SLO)", _fmt(slo["goodput_per_s"], "rate")),
        ("prefix hit ratio", _fmt(summary["tokens"]["prefix_hit_ratio"], "ratio")),
        ("send lag p99 ms", _fmt(summary["send_lag_ms"]["p99"], "ms")),
    ]
    estimate = summary.get("ttft_estimate_error_ms")
    if estimate and estimate["requests"]:
        rows += [(f"TTFT estimate error p{p} ms", _fmt(estimate[f"p{p}"], "ms")) for p in (50, 90)]
    for pool, stats in summary.get("pools", {}).items():
        rows.append((f"pool {pool} share / hit", f"{_fmt(stats['share_ratio'], 'ratio')} / {_fmt(stats['prefix_hit_ratio'], 'ratio')}"))
    for instance, stats in summary.get("instances", {}).items():
        rows.append((f"instance {instance} share", _fmt(stats["share_ratio"], "ratio")))
    return rows


def format_table(runs: list[tuple[str, dict[str, Any]]]) -> str:
    """One row per metric, one column per run; rows only some runs have show '-' for the others."""
    per_run = [dict(_rows(summary)) for _, summary in runs]
    names: list[str] = []
    for label_rows in (_rows(summary) for _, summary in runs):
        names += [name for name, _ in label_rows if name not in names]
    header = ["metric", *(label for label, _ in runs)]
    body = [[name, *(values.get(name, "-") for values in per_run)] for name in names]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def render(row: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))

    return "\n".join([render(header), "  ".join("-" * w for w in widths), *(render(row) for row in body)])
