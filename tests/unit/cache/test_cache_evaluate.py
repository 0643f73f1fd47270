"""cache eval and calibrate: threshold tuning, scoring with and without the verifier, intervals, the pair sources
(no embedding model: hand-made probes and the hashing embedder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fleetgate.cache import calibrate as cal
from fleetgate.cache import evaluate as ev
from fleetgate.cache import verify as vf
from fleetgate.cache.embed import HashingEmbedder
from fleetgate.cache.policy import CachePolicy


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


@pytest.mark.parametrize(
    ("correct", "total", "expected"),
    [
        (95, 100, (0.8882, 0.9785)),  # textbook Wilson 95% interval of 95/100
        (8, 10, (0.4902, 0.9433)),
        (10, 10, (0.7225, 1.0)),  # all correct: the interval still admits errors
        (0, 0, (0.0, 1.0)),  # nothing measured: nothing known
    ],
)
def test_wilson_interval_on_known_counts(correct: int, total: int, expected: tuple[float, float]) -> None:
    assert ev.wilson_interval(correct, total) == pytest.approx(expected, abs=1e-4)


def test_scores_report_the_precision_interval() -> None:
    scores = ev.score(probes(*[(0.9, True)] * 95, *[(0.9, False)] * 5), 0.5)
    assert scores.as_dict()["precision_ci95"] == [0.8882, 0.9785]


def test_a_verifier_threshold_refuses_what_the_cosine_lets_through() -> None:
    rows = [ev.Probe("c", 0.95, True, True, 0.9), ev.Probe("c", 0.95, False, False, 0.2), ev.Probe("c", 0.6, True, True, 0.99)]
    assert (ev.score(rows, 0.8).hits, ev.score(rows, 0.8).precision) == (2, 0.5)
    with_verifier = ev.score(rows, 0.8, 0.5)
    assert (with_verifier.hits, with_verifier.precision, with_verifier.recall) == (1, 1.0, 0.5)  # the cosine still gates
    with pytest.raises(ValueError, match="without a verifier"):
        ev.score(probes((0.9, True)), 0.5, 0.5)


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
    assert declared == {"health": 0.8} and [(p.text_b, p.category) for p in pairs] == [("Q1", "health"), ("Q2", "health")]


def test_one_namespace_lets_a_lookup_land_on_another_categorys_text() -> None:
    pairs = [ev.Pair("reset my password", "reset my password please", True, "accounts"),
             ev.Pair("what is the weather", "reset my password now", True, "weather")]
    embedder = HashingEmbedder(64)
    vectors = ev.embed_all(embedder, [t for p in pairs for t in (p.text_a, p.text_b)], progress=False)
    apart, _ = ev.probe_shared(pairs, vectors, embedder.dim)
    together, _ = ev.probe_shared(pairs, vectors, embedder.dim, one_namespace=True)
    assert [p.category for p in together] == ["accounts", "weather"]  # probes keep their category
    assert apart[1].correct and not together[1].correct  # alone with the weather it was right; together, another text is nearer


# ---- calibrate: per-category rules with and without the verifier ------------------------------------


def synthetic() -> list[ev.Probe]:
    """Three categories where a different rule wins: the cosine alone, the verifier, and none."""
    cosine_wins = [ev.Probe("cosine", 0.72, True, True, v) for v in [0.9] * 5 + [0.2] * 5]
    cosine_wins += [ev.Probe("cosine", 0.71, False, False, 0.5)] * 10  # just below every positive
    verifier_wins = [ev.Probe("verifier", 0.92, True, True, 0.9)] * 10
    verifier_wins += [ev.Probe("verifier", 0.95, False, False, 0.1)] * 10  # closer than the positives: one word differs
    hopeless = [ev.Probe("hopeless", 0.9, ok, ok, 0.5) for ok in [True, False] * 5]
    return cosine_wins + verifier_wins + hopeless


def test_calibrate_picks_the_rule_with_the_most_recall_that_reaches_the_target() -> None:
    rules = cal.calibrate(synthetic(), 0.9, 0.0)
    assert rules == {"cosine": cal.HitRule(0.72), "verifier": cal.HitRule(0.7, 0.9), "hopeless": None}
    assert cal.cosine_rule(synthetic()[:20], 0.9, 0.0) == (10, cal.HitRule(0.72))
    assert cal.verifier_rule(synthetic()[:20], 0.9, 0.0) == (5, cal.HitRule(0.7, 0.9))  # the cosine recalls twice as much


def test_calibrate_asks_confidence_of_few_pairs() -> None:
    assert cal.calibrate(synthetic(), 0.9, 1.645) == {"cosine": None, "verifier": None, "hopeless": None}  # 10 of 10 is not sure


def test_calibration_yaml_pastes_into_a_policy() -> None:
    categories = {c["name"]: c["cache"] for c in yaml.safe_load(cal.calibration_yaml(synthetic(), 0.9, 0.0))["categories"]}
    policies = {name: CachePolicy.model_validate(cache) for name, cache in categories.items()}
    assert (policies["cosine"].enabled, policies["cosine"].threshold, policies["cosine"].verify) == (True, 0.72, False)
    assert (policies["verifier"].threshold, policies["verifier"].verify, policies["verifier"].verifier_threshold) == (0.7, True, 0.9)
    assert not policies["hopeless"].enabled


def test_judge_reports_each_category_with_and_without_its_verifier() -> None:
    report = cal.judge(synthetic(), {"verifier": cal.HitRule(0.7, 0.9)}, default=cal.HitRule(0.72))
    verifier = report["per_category"]["verifier"]
    assert verifier["with_verifier"]["precision"] == 1.0 and verifier["without_verifier"]["precision"] == 0.5
    assert report["per_category"]["cosine"]["verify"] is False  # the default rule: no verifier
    assert report["overall"]["with_verifier"]["hits"] == 10 + 10 + 10  # cosine 10, verifier 10, hopeless 10 (default 0.72)


def test_a_policy_rule_relaxes_only_its_cosine_threshold() -> None:
    model = vf.default_model()
    policy = CachePolicy(enabled=True, threshold=0.8, verifier_threshold=0.4, adaptive={"min_threshold": 0.75, "max_ttl_s": 7200})
    assert cal.HitRule.of(policy, model) == cal.HitRule(0.8, 0.4)
    assert cal.HitRule.of(policy, model, relaxed=True) == cal.HitRule(0.75, 0.4)
    assert cal.HitRule.of(CachePolicy(enabled=True), model).verifier_threshold == model.operating_point.threshold
    assert cal.HitRule.of(CachePolicy(enabled=True, verify=False), model) == cal.HitRule(0.9)


def test_a_guard_threshold_keeps_the_share_of_correct_hits_asked() -> None:
    correct = [ev.Probe("c", 0.9, True, True, v / 20) for v in range(1, 21)]  # verifier scores 0.05 .. 1.0
    wrong = [ev.Probe("c", 0.9, False, False, 0.01)] * 5
    below = [ev.Probe("c", 0.5, True, True, 0.0)] * 5  # under the cosine threshold: not a hit either way
    guard = cal.guard_threshold(correct + wrong + below, 0.8, keep=0.9)
    assert ev.score(correct + wrong + below, 0.8, guard).correct_hits == 18  # 90% of the 20 correct hits stay
    assert ev.score(correct + wrong + below, 0.8, guard).precision == 1.0  # and the wrong ones go
