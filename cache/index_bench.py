"""`fleetgate bench cache-index`: the measurement behind the HNSW library choice of cache/index.py.

Each library builds the same index (clustered unit vectors that look like sentence embeddings:
paraphrase-dense clusters, not uniform noise) in a fresh process so its memory is its own, then
answers single-vector k-NN queries one at a time, the way the gateway asks. Recall@1 is against
exact brute-force inner product.
"""

from __future__ import annotations

import concurrent.futures
import gc
import multiprocessing
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from fleetgate.cache.index import DEFAULT_EF_CONSTRUCTION, DEFAULT_EF_SEARCH, DEFAULT_M

LIBRARIES = ("hnswlib", "usearch", "faiss")
# every library is measured with the graph parameters the cache itself uses
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = DEFAULT_M, DEFAULT_EF_CONSTRUCTION, DEFAULT_EF_SEARCH


@dataclass(frozen=True, slots=True)
class IndexFigures:
    library: str
    version: str
    build_s: float
    search_p50_ms: float
    search_p99_ms: float
    memory_mib: float
    recall_at_1: float


def synthetic_embeddings(n: int, dim: int, *, clusters: int = 2000, noise: float = 0.35, seed: int = 0) -> np.ndarray:
    """Unit vectors in `clusters` topical clusters: a stand-in for a cache full of sentence embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def paraphrase_queries(data: np.ndarray, count: int, *, seed: int = 1) -> np.ndarray:
    """Queries near stored points (a paraphrase of a cached prompt): the case a cache must get right."""
    rng = np.random.default_rng(seed)
    base = data[rng.integers(0, len(data), count)]
    queries = base + 0.15 * rng.standard_normal(base.shape, dtype=np.float32) / np.sqrt(data.shape[1])
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


Search = Callable[[np.ndarray, int], np.ndarray]


def _build_hnswlib(data: np.ndarray, threads: int) -> tuple[str, Search, object]:
    import hnswlib

    index = hnswlib.Index(space="ip", dim=data.shape[1])
    index.init_index(max_elements=len(data), M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION, allow_replace_deleted=True)
    index.add_items(data, np.arange(len(data)), num_threads=threads)
    index.set_ef(HNSW_EF_SEARCH)
    index.set_num_threads(1)

    def search(query: np.ndarray, k: int) -> np.ndarray:
        labels, _ = index.knn_query(query, k=k, num_threads=1)
        return labels[0]

    return getattr(hnswlib, "__version__", "0.8"), search, index


def _build_usearch(data: np.ndarray, threads: int) -> tuple[str, Search, object]:
    import usearch
    from usearch.index import Index

    index = Index(ndim=data.shape[1], metric="ip", dtype="f32", connectivity=HNSW_M, expansion_add=HNSW_EF_CONSTRUCTION, expansion_search=HNSW_EF_SEARCH)
    index.add(np.arange(len(data)), data, threads=threads)

    def search(query: np.ndarray, k: int) -> np.ndarray:
        return index.search(query, k, threads=1).keys

    return usearch.__version__, search, index


def _build_faiss(data: np.ndarray, threads: int) -> tuple[str, Search, object]:
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexHNSWFlat(data.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(data)
    index.hnsw.efSearch = HNSW_EF_SEARCH
    faiss.omp_set_num_threads(1)

    def search(query: np.ndarray, k: int) -> np.ndarray:
        _, labels = index.search(query.reshape(1, -1), k)
        return labels[0]

    return faiss.__version__, search, index


_BUILDERS = {"hnswlib": _build_hnswlib, "usearch": _build_usearch, "faiss": _build_faiss}


def measure_library(library: str, n: int, dim: int, k: int, queries: int, runs: int, threads: int) -> IndexFigures:
    """Build and query one library's index (run this in a fresh process so the memory figure is clean)."""
    data = synthetic_embeddings(n, dim)
    probe = paraphrase_queries(data, queries)
    truth = np.argmax(probe @ data.T, axis=1)
    gc.collect()
    rss_before = _rss_mib()
    started = time.perf_counter()
    version, search, _index = _BUILDERS[library](data, threads)
    build_s = time.perf_counter() - started
    memory_mib = _rss_mib() - rss_before
    p50s, p99s = [], []
    found = np.empty(queries, dtype=np.int64)
    for _ in range(runs):
        latencies = np.empty(queries)
        for i in range(queries):
            t0 = time.perf_counter()
            labels = search(probe[i], k)
            latencies[i] = time.perf_counter() - t0
            found[i] = labels[0]
        p50s.append(float(np.percentile(latencies, 50)) * 1e3)
        p99s.append(float(np.percentile(latencies, 99)) * 1e3)
    return IndexFigures(
        library=library,
        version=str(version),
        build_s=build_s,
        search_p50_ms=statistics.median(p50s),
        search_p99_ms=statistics.median(p99s),
        memory_mib=memory_mib,
        recall_at_1=float(np.mean(found == truth)),
    )


def run_bench(libraries: list[str], *, n: int, dim: int, k: int, queries: int, runs: int, threads: int) -> list[IndexFigures | str]:
    """Each library in its own spawned process; a missing library is reported, not fatal."""
    results: list[IndexFigures | str] = []
    context = multiprocessing.get_context("spawn")
    for library in libraries:
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            try:
                results.append(pool.submit(measure_library, library, n, dim, k, queries, runs, threads).result())
            except ImportError as error:
                results.append(f"{library}: not installed ({error})")
    return results


def format_table(results: list[IndexFigures | str]) -> str:
    header = f"{'library':<9} {'version':<9} {'build_s':>8} {'p50_ms':>8} {'p99_ms':>8} {'mem_MiB':>8} {'recall@1':>8}"
    lines = [header]
    for row in results:
        if isinstance(row, str):
            lines.append(row)
            continue
        d = asdict(row)
        lines.append(
            f"{d['library']:<9} {d['version']:<9} {d['build_s']:>8.1f} {d['search_p50_ms']:>8.3f} "
            f"{d['search_p99_ms']:>8.3f} {d['memory_mib']:>8.0f} {d['recall_at_1']:>8.3f}"
        )
    return "\n".join(lines)
