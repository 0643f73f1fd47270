"""`fleetgate bench cache`: what a lookup costs, next to exact brute-force search as the baseline.

- search: one namespace of N entries (cache/index.py's VectorIndex, as the cache uses it) vs a numpy
  matrix-vector product over the same vectors, single queries, p50/p99;
- miss cost: embedding with the real model plus the search, for one query and for a batch of 32
  (what AsyncBatchingEmbedder forms under concurrent load), p50 per call.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from tqdm import tqdm

from fleetgate.cache.embed import Embedder
from fleetgate.cache.index import VectorIndex
from fleetgate.cache.index_bench import paraphrase_queries, synthetic_embeddings


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    p50_ms: float
    p99_ms: float
    baseline_p50_ms: float
    baseline_p99_ms: float


def latency_percentiles_ms(run: Callable[[int], object], count: int) -> tuple[float, float]:
    latencies = np.empty(count)
    for i in range(count):
        started = time.perf_counter()
        run(i)
        latencies[i] = time.perf_counter() - started
    return float(np.percentile(latencies, 50)) * 1e3, float(np.percentile(latencies, 99)) * 1e3


def _median_of(runs: int, measure: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    results = [measure() for _ in range(runs)]
    return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)


def run_bench(embedder: Embedder, *, entries: int, queries: int, runs: int, k: int = 4) -> tuple[float, list[Row]]:
    """Returns the index build time (s) and the rows of the table."""
    dim = embedder.dim
    data = synthetic_embeddings(entries, dim)
    probes = paraphrase_queries(data, queries)
    ids = [str(i) for i in range(entries)]
    started = time.perf_counter()
    index = VectorIndex.build(ids, data, dim=dim)
    build_s = time.perf_counter() - started

    def hnsw(i: int) -> object:
        return index.search(probes[i % queries], k, 0.0)

    def brute(i: int) -> object:
        scores = data @ probes[i % queries]
        return np.argpartition(-scores, k)[:k]

    rows = [Row(f"search k={k} @{entries}", *_median_of(runs, lambda: latency_percentiles_ms(hnsw, queries)),
                *_median_of(runs, lambda: latency_percentiles_ms(brute, queries)))]
    texts = [f"How do I configure feature number {i} of the product for my team?" for i in range(512)]
    embedder.embed(texts[:32])  # warm-up: first calls pay lazy initialisation
    for batch in tqdm((1, 32), desc="miss cost", unit="batch size"):
        samples = max(5, 200 // batch)

        def miss(i: int, search: Callable[[int], object], batch: int = batch) -> object:
            vectors = embedder.embed(texts[(i * batch) % 480 : (i * batch) % 480 + batch])
            return [search(j) for j in range(len(vectors))]

        rows.append(Row(f"miss: embed+search, batch {batch}", *_median_of(runs, lambda: latency_percentiles_ms(lambda i: miss(i, hnsw), samples)),
                        *_median_of(runs, lambda: latency_percentiles_ms(lambda i: miss(i, brute), samples))))
    return build_s, rows


def format_table(build_s: float, rows: list[Row]) -> str:
    lines = [f"index build: {build_s:.1f} s",
             f"{'':<34} {'hnsw p50':>9} {'p99 ms':>8}   {'brute p50':>9} {'p99 ms':>8}"]
    lines += [f"{r.name:<34} {r.p50_ms:>9.3f} {r.p99_ms:>8.3f}   {r.baseline_p50_ms:>9.3f} {r.baseline_p99_ms:>8.3f}" for r in rows]
    return "\n".join(lines)
