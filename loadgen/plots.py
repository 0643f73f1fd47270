"""PNG figures of replay runs (matplotlib, Agg backend: no display needed).

Per run: the TTFT CDF with the SLO line; request rate and TTFT over time (bursts and the latency
they cause, on one time axis); per-instance share and load over time when the target names instances.
Across runs: one figure comparing TTFT CDFs, percentiles, SLO attainment and goodput.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleetgate.loadgen.replay import RequestResult

MAX_BINS = 60


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cdf(values: list[float]) -> tuple[list[float], list[float]]:
    ordered = sorted(values)
    n = len(ordered)
    return ordered, [(i + 1) / n for i in range(n)]


def _rate(times_s: list[float], span_s: float) -> tuple[list[float], list[float]]:
    """(bin edges, events per second in each bin), closed at the end so steps draw every bin.

    Bins are 1 s, widened so a long run has at most MAX_BINS of them (a readable rate, not noise).
    """
    bin_s = max(1.0, span_s / MAX_BINS)
    counts = [0] * (int(span_s // bin_s) + 1)
    for t in times_s:
        counts[min(max(int(t // bin_s), 0), len(counts) - 1)] += 1
    rates = [c / bin_s for c in counts]
    return [i * bin_s for i in range(len(counts) + 1)], rates + rates[-1:]


def plot_run(out_dir: Path, results: list[RequestResult], summary: dict[str, Any]) -> list[Path]:
    plt = _pyplot()
    paths = []
    ok = [r for r in results if r.ttft_ms is not None and r.error is None]
    slo_ms = summary["slo"]["ttft_ms"]

    fig, ax = plt.subplots(figsize=(6, 4))
    if ok:
        ax.plot(*_cdf([r.ttft_ms for r in ok]), label=f"TTFT ({len(ok)} requests)")
    ax.axvline(slo_ms, color="red", linestyle="--", label=f"SLO {slo_ms:.0f} ms")
    ax.set(xlabel="time to first token (ms)", ylabel="fraction of requests", title="TTFT CDF", ylim=(0, 1.01))
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    paths.append(_save(fig, out_dir / "ttft_cdf.png"))

    sent = [r for r in results if r.sent_s is not None]
    span_s = max((r.scheduled_s for r in results), default=0.0)
    fig, (rate_ax, ttft_ax) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    rate_ax.step(*_rate([r.scheduled_s for r in results], span_s), where="post", label="offered (trace)")
    rate_ax.step(*_rate([r.sent_s for r in sent], span_s), where="post", label="sent", alpha=0.7)
    dropped = [r.scheduled_s for r in results if r.error == "dropped"]
    if dropped:
        rate_ax.step(*_rate(dropped, span_s), where="post", label="dropped (cap)", color="red")
    rate_ax.set(ylabel="requests / s", title="Request rate and TTFT over time")
    rate_ax.set_ylim(bottom=0)
    rate_ax.legend(loc="upper right")
    rate_ax.grid(alpha=0.3)
    ttft_ax.scatter([r.sent_s for r in ok], [r.ttft_ms for r in ok], s=4, alpha=0.5, label="TTFT per request")
    failed = [r for r in sent if r.error is not None]
    if failed:
        ttft_ax.scatter([r.sent_s for r in failed], [slo_ms] * len(failed), s=12, marker="x", color="red", label="error")
    ttft_ax.axhline(slo_ms, color="red", linestyle="--", linewidth=1, label="SLO")
    ttft_ax.set(xlabel="time since start (s)", ylabel="TTFT (ms)")
    if ok:
        ttft_ax.set_yscale("log")
    ttft_ax.legend(loc="upper right")
    ttft_ax.grid(alpha=0.3)
    paths.append(_save(fig, out_dir / "timeline.png"))

    instances = sorted({r.instance for r in sent if r.instance is not None})
    if instances:
        fig, (share_ax, load_ax) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 2]})
        stats = summary["instances"]
        share_ax.barh(instances, [stats[i]["share_ratio"] * 100 for i in instances])
        share_ax.set(xlabel="share of requests (%)", title="Per-instance share")
        for name in instances:
            load_ax.step(*_rate([r.sent_s for r in sent if r.instance == name], span_s), where="post", label=name)
        load_ax.set(xlabel="time since start (s)", ylabel="requests sent / s", title="Per-instance load over time")
        load_ax.set_ylim(bottom=0)
        load_ax.legend(loc="upper right", fontsize="small", ncol=2)
        load_ax.grid(alpha=0.3)
        paths.append(_save(fig, out_dir / "instances.png"))
    return paths


def plot_compare(path: Path, runs: list[tuple[str, list[RequestResult], dict[str, Any]]]) -> Path:
    """One figure: TTFT CDFs overlaid, TTFT p50/p90/p99 per run, SLO attainment and goodput per run."""
    plt = _pyplot()
    fig, (cdf_ax, pct_ax, slo_ax) = plt.subplots(1, 3, figsize=(16, 4.5))
    labels = [label for label, _, _ in runs]
    for label, results, _ in runs:
        ttfts = [r.ttft_ms for r in results if r.ttft_ms is not None and r.error is None]
        if ttfts:
            cdf_ax.plot(*_cdf(ttfts), label=label)
    cdf_ax.set(xlabel="TTFT (ms)", ylabel="fraction of requests", title="TTFT CDF", ylim=(0, 1.01))
    cdf_ax.set_xscale("log")
    cdf_ax.grid(alpha=0.3)
    cdf_ax.legend(loc="lower right")
    width = 0.8 / len(runs)
    for i, (label, _, summary) in enumerate(runs):
        values = [summary["ttft_ms"][p] or 0 for p in ("p50", "p90", "p99")]
        pct_ax.bar([x + i * width for x in range(3)], values, width, label=label)
    pct_ax.set_xticks([x + width * (len(runs) - 1) / 2 for x in range(3)], ["p50", "p90", "p99"])
    pct_ax.set(ylabel="TTFT (ms, log)", title="TTFT percentiles")
    pct_ax.set_yscale("log")
    pct_ax.legend()
    attainment = [(s["slo"]["attainment_ratio"] or 0) * 100 for _, _, s in runs]
    goodput = [s["slo"]["goodput_per_s"] or 0 for _, _, s in runs]
    colors = [f"C{i}" for i in range(len(runs))]  # the same colour per run in every panel
    slo_ax.bar(labels, attainment, color=colors)
    slo_ax.tick_params(axis="x", labelrotation=20)
    slo_ax.set(ylabel="SLO attainment (%)", title="SLO attainment (bars) and goodput (dots)", ylim=(0, 105))
    goodput_ax = slo_ax.twinx()
    goodput_ax.plot(labels, goodput, "o", color="black")
    goodput_ax.set(ylabel="goodput (req/s)", ylim=(0, max(goodput + [1]) * 1.2))
    fig.tight_layout()
    return _save(fig, path)


def plot_panels(path: Path, panels: dict[str, dict[str, tuple[list[float], list[float]]]], *,
                marker_s: float | None = None, marker_label: str = "", title: str = "") -> Path:
    """Time series in stacked panels sharing the time axis (panel title -> line label -> (times s,
    values)), with an optional vertical marker, e.g. the end of a soak's warm-up."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.4 * len(panels)), sharex=True, squeeze=False)
    for ax, (name, lines) in zip(axes[:, 0], panels.items()):
        for label, (times_s, values) in sorted(lines.items()):
            ax.plot(times_s, values, marker=".", label=label)
        if marker_s is not None:
            ax.axvline(marker_s, color="grey", linestyle="--", label=marker_label or None)
        ax.set(ylabel=name)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize="x-small", ncol=2)
    axes[-1, 0].set(xlabel="time (s)")
    if title:
        axes[0, 0].set_title(title)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
