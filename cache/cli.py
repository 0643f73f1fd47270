"""`fleetgate` subcommands of the semantic cache (cache eval, bench cache) area (see router/cli.py for how areas register)."""

from __future__ import annotations

import argparse


def _bench_cache_index(args: argparse.Namespace) -> int:
    from cache.index_bench import LIBRARIES, format_table, run_bench

    libraries = args.libraries or list(LIBRARIES)
    print(
        f"HNSW libraries, {args.entries} entries, dim {args.dim}, k={args.k}, {args.queries} single queries x {args.runs} runs "
        f"(median), build on {args.threads} threads, search on 1 thread"
    )
    print(format_table(run_bench(libraries, n=args.entries, dim=args.dim, k=args.k, queries=args.queries, runs=args.runs, threads=args.threads)))
    return 0


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to `commands` and its benchmarks to `bench`."""
    index = bench.add_parser(
        "cache-index",
        help="compare HNSW libraries (hnswlib, usearch, faiss) for the semantic cache index",
        description=(
            "Builds the same index of clustered unit vectors with each HNSW library and prints build time, "
            "single-query search p50/p99, memory and recall@1 against brute force, side by side. "
            "This is the measurement behind the library used in cache/index.py."
        ),
    )
    index.add_argument("--entries", type=int, default=100_000, help="vectors in the index (default 100000)")
    index.add_argument("--dim", type=int, default=384, help="vector dimension (default 384, all-MiniLM-L6-v2)")
    index.add_argument("--k", type=int, default=4, help="neighbours per query (default 4)")
    index.add_argument("--queries", type=int, default=2000, help="queries per run (default 2000)")
    index.add_argument("--runs", type=int, default=3, help="search runs; the median is printed (default 3)")
    index.add_argument("--threads", type=int, default=2, help="threads for building (default 2)")
    index.add_argument("--libraries", nargs="*", choices=["hnswlib", "usearch", "faiss"], help="subset to compare (default all)")
    index.set_defaults(func=_bench_cache_index)
