"""What the cache verifier adds to a lookup, next to what embedding the query costs.

Both on real Quora questions, single calls, p50/p99 per run and the median of several runs (the
machine is shared, so one run's p99 is noise). The verifier is timed end to end as the cache would
call it on a candidate: both texts analysed, features, trees. Its cost does not depend on the cosine
(the trees are complete), so every pair is scored at one fixed cosine and no model is needed for
it; the embedding row loads MiniLM (one torch thread, as the gateway runs it).
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fleetgate.cache import evaluate as ev
from fleetgate.cache import verify as vf
from fleetgate.cache.bench import latency_percentiles_ms

BENCH_COSINE = 0.9


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    p50_ms: float
    p99_ms: float


def measure(name: str, call: Callable[[int], object], count: int, runs: int) -> Row:
    """Median over `runs` of each run's p50 and p99 (ms), after one warm-up call."""
    call(0)
    results = [latency_percentiles_ms(call, count) for _ in range(runs)]
    return Row(name, statistics.median(r[0] for r in results), statistics.median(r[1] for r in results))


def verifier_row(model: vf.VerifierModel, pairs: list[ev.Pair], runs: int) -> Row:
    def call(i: int) -> object:
        pair = pairs[i % len(pairs)]
        return model.verify(pair.text_b, pair.text_a, BENCH_COSINE)

    return measure(f"verify one candidate ({len(pairs)} QQP pairs)", call, len(pairs), runs)


def embedding_row(texts: list[str], runs: int, threads: int) -> Row:
    from fleetgate.cache.embed import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder(max_threads=threads)
    return measure(f"embed one query, MiniLM, {threads} thread(s)", lambda i: embedder.embed([texts[i % len(texts)]]), len(texts), runs)


def format_rows(rows: list[Row]) -> str:
    lines = [f"{'':<44} {'p50 ms':>8} {'p99 ms':>8}"]
    lines += [f"{r.name:<44} {r.p50_ms:>8.3f} {r.p99_ms:>8.3f}" for r in rows]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's options, on its own parser or on `fleetgate bench cache-verify`'s."""
    parser.add_argument("--traces", type=Path, default=Path("../shared/traces"), help="directory with qqp/train.jsonl")
    parser.add_argument("--model", type=Path, default=None, help="verifier JSON (default: the shipped one)")
    parser.add_argument("--pairs", type=int, default=1000, help="QQP pairs timed per run")
    parser.add_argument("--runs", type=int, default=5, help="runs; medians of their p50 and p99 are printed")
    parser.add_argument("--embed-queries", type=int, default=200, help="queries embedded per run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the embedding row")
    parser.add_argument("--no-embedding", action="store_true", help="skip the embedding row (no model load)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="verify_bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Print the verifier's per-lookup cost and, unless --no-embedding, the embedding's."""
    model = vf.VerifierModel.load(args.model) if args.model else vf.default_model()
    pairs = ev.read_pairs(args.traces / "qqp" / "train.jsonl")[: args.pairs]
    rows = [verifier_row(model, pairs, args.runs)]
    if not args.no_embedding:
        rows.append(embedding_row([p.text_b for p in pairs[: args.embed_queries]], args.runs, args.threads))
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
