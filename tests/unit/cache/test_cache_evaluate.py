"""cache eval: threshold tuning, scoring and the pair sources (no model: hand-made probes and the hashing embedder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetgate.cache import evaluate as ev
from fleetgate.cache.embed import HashingEmbedder


def probes(*rows: tuple[float, bool], category: str = "c") -> list[ev.Probe]:
    return [ev.Probe(category, s, ok, ok) for s, ok in rows]


@pytest.mark.parametrize(
    ("rows", "target", "confident", "expected"),
    [
        ([(0.99, True), (0.95, True), (0.90, False), (0.85, True)], 0.75, False, 0.85),  # 3/4 reaches 0.75 at the bottom
        ([(0.99, True), (0.95, True), (0.90, False), (0.85, True)], 0.9, False, 0.95),
        ([(0.99, False)], 0.5, False, None),
        ([(0.99, True)] * 3, 0.95, True, None),  # three hits are too few to be confident
        ([(0.99, True)] * 60, 0.95, True, 0.99),
    ],
)
def test_lowest_threshold(rows: list[tuple[float, bool]], target: float, confident: bool, expected: float | None) -> None:
    assert ev.lowest_threshold(probes(*rows), target, confident=confident) == expected


def test_wilson_lower_bound_is_below_the_measured_precision_and_tightens_with_n() -> None:
    assert ev.wilson_lower_bound(19, 20) < 0.95 < ev.wilson_lower_bound(990, 1000) < 0.99


def test_scores_and_the_per_category_gain_over_a_uniform_threshold() -> None:
    sparse = probes((0.80, True), (0.78, True), (0.60, False), category="chat")  # paraphrases sit low
    dense = probes((0.97, True), (0.93, False), (0.90, False), category="code")  # near-misses sit high
    scores, total = ev.score_per_category(sparse + dense, {"chat": 0.75, "code": 0.95}, ev.DISABLED)
    assert total.precision == 1.0 and total.hits == 3 and total.hit_rate == 0.5
    uniform_threshold, uniform = ev.uniform_at_precision(sparse + dense, 1.0)
    assert uniform_threshold == 0.97 and uniform.hits == 1  # one threshold must sit above code's near-misses
    assert scores["code"].recall == 1.0


def test_probe_pairs_and_shared_namespace(tmp_path: Path) -> None:
    pairs = [ev.Pair("reset my password", "reset my password please", True, "faq"),
             ev.Pair("reset my password", "what is the weather", False, "faq")]
    ev.write_pairs(pairs, tmp_path / "p.jsonl")
    assert ev.read_pairs(tmp_path / "p.jsonl") == pairs
    embedder = HashingEmbedder(64)
    vectors = ev.embed_all(embedder, [t for p in pairs for t in (p.text_a, p.text_b)], progress=False)
    alone = ev.probe_pairs(pairs, vectors)
    assert [p.correct for p in alone] == [True, False] and alone[0].similarity > alone[1].similarity
    shared, latencies = ev.probe_shared(pairs, vectors, embedder.dim)
    assert len(latencies) == 2 and [p.correct for p in shared] == [True, False]


def test_pair_sources_read_the_shared_formats(tmp_path: Path) -> None:
    (tmp_path / "sts.csv").write_text(
        "main-forums\tsrc\t2015\t1\t4.5\tA cat sits.\tA cat is sitting.\n"
        "main-news\tsrc\t2015\t2\t3.0\tNeither.\tDropped.\n"
        "main-news\tsrc\t2015\t3\t0.5\tStocks fell.\tIt rained.\n"
    )
    assert ev.stsb_pairs(tmp_path / "sts.csv") == [ev.Pair("A cat sits.", "A cat is sitting.", True, "forum"),
                                                  ev.Pair("Stocks fell.", "It rained.", False, "news")]
    (tmp_path / "cases.json").write_text(json.dumps([{"description": "x (0.8)", "category": "health",
                                                       "original_question": "Q", "similar_questions": ["Q1", "Q2"]}]))
    pairs, declared = ev.cache_case_pairs(tmp_path / "cases.json")
    assert declared == {"health": 0.8} and [p.text_b for p in pairs] == ["Q1", "Q2"]
