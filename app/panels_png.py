"""The dashboard's panels drawn with matplotlib from a Prometheus server's HTTP API: the same queries
as deploy/grafana/fleetgate.json (app/dashboard.py), for a picture where no Grafana runs."""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from fleetgate.app.dashboard import PANELS, query_for


def query_range(prometheus: str, expr: str, start_s: float, end_s: float, step_s: float) -> list[dict[str, Any]]:
    """`/api/v1/query_range`'s series for `expr` (raises on an error answer, e.g. a bad query)."""
    params = urllib.parse.urlencode({"query": expr, "start": start_s, "end": end_s, "step": step_s})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as answer:
        document = json.load(answer)
    if document.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {document.get('error')}")
    return document["data"]["result"]


def _legend(template: str, labels: dict[str, str]) -> str:
    for name, value in labels.items():
        template = template.replace("{{" + name + "}}", value)
    return template


def render(prometheus: str, out: Path, *, minutes: float, window: str) -> int:
    """Draw every panel over the last `minutes`, rates over `window`; returns how many panels had data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end_s = time.time()
    start_s = end_s - minutes * 60
    step_s = max(1.0, minutes * 60 / 200)
    columns = 3
    rows = math.ceil(len(PANELS) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 3.2 * rows), squeeze=False)
    with_data = 0
    for axis, panel in zip(axes.flat, PANELS):
        drawn = 0
        for query in panel.queries:
            for series in query_range(prometheus, query_for(query, window), start_s, end_s, step_s):
                points = [(float(t) - end_s, float(v)) for t, v in series["values"] if v not in ("NaN", "+Inf", "-Inf")]
                if points:
                    axis.plot([p[0] for p in points], [p[1] for p in points],
                              label=_legend(query.legend, series["metric"]))
                    drawn += 1
        with_data += drawn > 0
        axis.set_title(panel.title, fontsize=10)
        axis.set_xlabel("seconds before now", fontsize=8)
        axis.tick_params(labelsize=7)
        if panel.unit == "percentunit":
            axis.set_ylim(0, 1.05)
        if drawn:
            axis.legend(fontsize=6, loc="upper left")
    for axis in list(axes.flat)[len(PANELS):]:
        axis.set_visible(False)
    figure.suptitle("Fleetgate dashboard panels (deploy/grafana/fleetgate.json), rendered from Prometheus")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80)
    plt.close(figure)
    return with_data
