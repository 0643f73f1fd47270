"""One chaos scenario's figures from its replayed requests and the fault's start and end (pure).

Each request is one of:
- completed: answered in full;
- cut: it had streamed tokens when it broke; where it was cut (the instance, or the gateway replica
  when a replica broke) says whether the cut was the fault's own (on what broke) or not;
- failed: it broke before its first token. Such a request was not yet streaming when the fault hit,
  so the gateway could have sent it elsewhere: it is an avoidable failure. One exception: when a
  gateway replica is killed, the requests inside it are lost with it (nothing but Ray's proxy stands
  in front of a replica); those open at the kill are counted apart, as lost with the replica.

Recovery: requests are put in 1 s windows by the time they were sent. The pre-fault level is the
share within the TTFT SLO of the requests whose SLO deadline passed before the fault (sent at least
one SLO before it). From the fault's end on, the recovery time is the start of the first window that,
with the next one, reaches that level less `slack` (with about six requests a window, a slack of 0.2
forgives one slow request: a busy machine's, not the fault's). None: not back before the run ended.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fleetgate.loadgen.replay import RequestResult
from fleetgate.loadgen.report import meets_slo

WINDOW_S = 1.0
SLACK = 0.2


@dataclass(frozen=True, slots=True)
class FaultSpan:
    """When the fault was on, in seconds from the replay's start, and what broke."""

    start_s: float
    end_s: float
    broken: str | None  # the instance or replica name; None: nothing that may cut a stream broke
    place: str = "instance"  # "instance" or "replica": which of a request's names `broken` is compared with


def _where(result: RequestResult, place: str) -> str:
    return (result.replica if place == "replica" else result.instance) or "unknown"


def _failure_kind(result: RequestResult) -> str:
    return result.error or "unknown"


def attainment(results: Sequence[RequestResult], ttft_slo_ms: float) -> float | None:
    return sum(meets_slo(r, ttft_slo_ms, None) for r in results) / len(results) if results else None


def recovery_s(results: Sequence[RequestResult], span: FaultSpan, ttft_slo_ms: float, *, window_s: float = WINDOW_S,
               slack: float = SLACK) -> tuple[float | None, float | None]:
    """(pre-fault level, seconds from the fault's end until SLO attainment was back at it)."""
    sent = [r for r in results if r.sent_s is not None]
    level = attainment([r for r in sent if r.sent_s + ttft_slo_ms / 1000 <= span.start_s], ttft_slo_ms)
    if level is None:
        return None, None
    last_s = max(r.sent_s for r in sent)
    windows: list[bool] = []
    start_s = span.end_s
    while start_s <= last_s:
        inside = [r for r in sent if start_s <= r.sent_s < start_s + window_s]
        share = attainment(inside, ttft_slo_ms)
        windows.append(share is None or share >= level - slack)
        start_s += window_s
    for k, good in enumerate(windows):
        if good and (k + 1 == len(windows) or windows[k + 1]):
            return level, k * window_s
    return level, None


def analyse(results: Sequence[RequestResult], span: FaultSpan, ttft_slo_ms: float) -> dict[str, Any]:
    """The scenario's counts (see the module docstring) and its recovery."""
    sent = [r for r in results if r.sent_s is not None]
    cut = [r for r in sent if r.error is not None and r.ttft_ms is not None]
    failed = [r for r in sent if r.error is not None and r.ttft_ms is None]
    cut_at = Counter(_where(r, span.place) for r in cut)
    lost = [r for r in failed if span.place == "replica" and _open_at(r, span.start_s)]
    level, recovered_s = recovery_s(sent, span, ttft_slo_ms)
    return {
        "sent": len(sent),
        "dropped": len(results) - len(sent),
        "completed": sum(r.error is None for r in sent),
        "failed": len(failed),
        "failed_by_status": dict(Counter(_failure_kind(r) for r in failed)),
        "cut": len(cut),
        "cut_at": dict(cut_at),
        "cut_elsewhere": sum(n for where, n in cut_at.items() if where != span.broken),
        "streaming_at_fault": sum(1 for r in sent if _streaming_at(r, span.start_s)),
        "lost_with_replica": len(lost),
        "avoidable_failures": len(failed) - len(lost),
        "fault_start_s": round(span.start_s, 3),
        "fault_end_s": round(span.end_s, 3),
        "broken": span.broken,
        "pre_fault_attainment": level,
        "attainment": attainment(sent, ttft_slo_ms),
        "recovery_s": recovered_s,
        "served_by": dict(Counter(r.instance or "none" for r in sent)),
    }


def _open_at(result: RequestResult, at_s: float) -> bool:
    """Whether it had been sent, and had not ended, at `at_s`."""
    return result.sent_s is not None and result.e2e_ms is not None and \
        result.sent_s <= at_s < result.sent_s + result.e2e_ms / 1000


def _streaming_at(result: RequestResult, at_s: float) -> bool:
    """Whether its first token had arrived, and its end had not, at `at_s`."""
    if result.sent_s is None or result.ttft_ms is None or result.e2e_ms is None:
        return False
    return result.sent_s + result.ttft_ms / 1000 <= at_s < result.sent_s + result.e2e_ms / 1000


def _cell(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The docs table: one row per scenario."""
    lines = ["| scenario | sent | completed | failed (by status) | cut mid-stream (where) | avoidable failures "
             "| SLO met before / overall | recovery |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['scenario']} | {row['error']} |" + " |" * 6)
            continue
        failed = ", ".join(f"{k} {v}" for k, v in sorted(row["failed_by_status"].items()))
        cut = ", ".join(f"{k} {v}" for k, v in sorted(row["cut_at"].items()))
        recovery = "not back" if row["recovery_s"] is None else f"{row['recovery_s']:.0f} s"
        lines.append(
            f"| {row['scenario']} | {row['sent']} | {row['completed']} | {row['failed']}"
            f"{f' ({failed})' if failed else ''} | {row['cut']}{f' ({cut})' if cut else ''} | "
            f"{row['avoidable_failures']} | {_cell(row['pre_fault_attainment'], '{:.0%}')} / "
            f"{_cell(row['attainment'], '{:.0%}')} | {recovery} |")
    return "\n".join(lines)
