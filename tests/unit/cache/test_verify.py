"""The cache verifier: its features on hand-made pairs, the shipped model, tree evaluation, and the training split."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fleetgate.cache import evaluate as ev
from fleetgate.cache import verify as vf
from fleetgate.cache import verify_bench, verify_train

COSINE = 0.93  # one cosine for both pairs compared, so only the words can move the score


def features(a: str, b: str, cosine: float = COSINE) -> dict[str, float]:
    model = vf.default_model()
    return dict(zip(vf.FEATURES, vf.pair_features(vf.profile(a), vf.profile(b), cosine, model.idf, model.default_idf)))


def score(a: str, b: str) -> float:
    return vf.default_model().score(a, b, COSINE)


# ---- features and the shipped model on hand-made pairs ----------------------------------------------


def test_shipped_model_loads_small_and_with_a_sane_operating_point() -> None:
    path = vf.shipped_model_path()
    assert path.stat().st_size < 5_000_000
    model = vf.default_model()
    assert 0.5 <= model.operating_point.cosine_floor < 1.0 and 0.0 < model.operating_point.threshold < 1.0
    assert model.depth >= 1 and len(model.idf) > 1000


@pytest.mark.parametrize("question", [
    "How do I learn Python quickly?",
    "What are the best restaurants in downtown Vancouver for a birthday dinner?",
    "Why is the sky blue during the day and red at sunset?",
])
def test_identical_questions_pass(question: str) -> None:
    assert vf.verify(question, question, 1.0).accepted


def test_a_different_number_is_seen_and_rejected() -> None:
    asked = "What is the best laptop under 500 dollars?"
    assert features(asked, "What is the best laptop under 1000 dollars?")["number_mismatch"] == 2
    assert features(asked, "What's the best laptop under 500 dollars?")["number_mismatch"] == 0
    assert score(asked, "What is the best laptop under 1000 dollars?") < score(asked, "What's the best laptop under 500 dollars?") - 0.3
    assert not vf.verify(asked, "What is the best laptop under 1000 dollars?", COSINE).accepted


def test_a_negation_is_seen_and_lowers_the_score() -> None:
    asked = "Why do people like cats?"
    assert features(asked, "Why don't people like cats?")["negation_mismatch"] == 1.0
    assert features(asked, "Why do so many people like cats?")["negation_mismatch"] == 0.0
    assert score(asked, "Why don't people like cats?") < score(asked, "Why do so many people like cats?") - 0.2


def test_a_different_name_is_seen_and_lowers_the_score() -> None:
    asked = "Who is the best football player in Brazil?"
    assert features(asked, "Who is the best football player in Argentina?")["name_mismatch"] == 2
    assert features(asked, "Who is the best football player in brazil?")["name_mismatch"] == 0  # case is not a name change
    assert score(asked, "Who is the best football player in Argentina?") < score(asked, "Who is the greatest football player in Brazil?")


def test_swapped_order_is_seen() -> None:
    assert features("How do I convert dollars to rupees?", "How do I convert rupees to dollars?")["order_inversions"] == pytest.approx(1 / 3)
    assert features("How do I convert dollars to rupees?", "How can I convert dollars to rupees?")["order_inversions"] == 0.0


def test_features_are_symmetric_but_for_the_cosine() -> None:
    a, b = "How can I lose 10 kg in a month without dieting?", "What is the fastest way to lose weight?"
    assert features(a, b) == features(b, a)


# ---- tree evaluation --------------------------------------------------------------------------------


def spec(trees: dict[str, object], bias: float = 0.5) -> dict[str, object]:
    return {"format": vf.MODEL_FORMAT, "features": list(vf.FEATURES), "bias": bias, "trees": trees, "idf": {}, "default_idf": 5.0,
            "operating_point": {"cosine_floor": 0.8, "threshold": 0.5}}


def test_complete_trees_are_walked_left_on_less_or_equal() -> None:
    cosine, numbers = vf.FEATURES.index("cosine"), vf.FEATURES.index("number_mismatch")
    # tree 1: cosine <= 0.9 ? (numbers <= 0.5 ? 1 : -1) : (numbers <= 0.5 ? 2 : -2); tree 2: a padded leaf 0.25 (always left)
    model = vf.VerifierModel(spec({"depth": 2, "feature": [[cosine, numbers, numbers], [0, 0, 0]],
                                   "threshold": [[0.9, 0.5, 0.5], [1e300, 1e300, 1e300]],
                                   "leaf": [[1.0, -1.0, 2.0, -2.0], [0.25, 0.0, 0.0, 0.0]]}))
    row = [0.0] * len(vf.FEATURES)

    def raw(cos: float, mismatched: float) -> float:
        row[cosine], row[numbers] = cos, mismatched
        return model.raw(row)

    assert raw(0.9, 0.0) == pytest.approx(0.5 + 1.0 + 0.25)
    assert raw(0.95, 0.0) == pytest.approx(0.5 + 2.0 + 0.25)
    assert raw(0.95, 2.0) == pytest.approx(0.5 - 2.0 + 0.25)
    assert raw(0.5, 1.0) == pytest.approx(0.5 - 1.0 + 0.25)
    assert model.verify("a b", "a b", 0.95).score == pytest.approx(1 / (1 + math.exp(-model.raw(
        vf.pair_features(vf.profile("a b"), vf.profile("a b"), 0.95, {}, 5.0)))))


def test_a_model_for_other_features_is_refused() -> None:
    trees = {"depth": 1, "feature": [[0]], "threshold": [[0.5]], "leaf": [[0.0, 0.0]]}
    with pytest.raises(ValueError, match="format"):
        vf.VerifierModel({**spec(trees), "format": "something-else/1"})
    with pytest.raises(ValueError, match="features"):
        vf.VerifierModel({**spec(trees), "features": ["cosine"]})


def test_exported_trees_reproduce_scikit_learn() -> None:
    pytest.importorskip("sklearn")
    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.default_rng(0)
    x = rng.random((400, len(vf.FEATURES)))
    y = (x[:, 0] + 0.3 * x[:, 3] + 0.2 * rng.random(400) > 0.8).astype(int)
    # min_samples_leaf makes some branches stop above max_depth: the padded leaves are exercised
    booster = GradientBoostingClassifier(n_estimators=20, max_depth=3, min_samples_leaf=60, random_state=0).fit(x, y)
    prior = booster.init_.class_prior_[1]
    model = vf.VerifierModel(spec(verify_train.export_trees(booster, 3), bias=math.log(prior / (1 - prior))))
    assert np.allclose([model.raw(list(row)) for row in x[:50]], booster.decision_function(x[:50]), atol=1e-6)


# ---- training data and the operating point ----------------------------------------------------------


def test_split_keeps_every_question_in_one_split_and_is_stable() -> None:
    pairs = [ev.Pair(f"q{i}", f"q{i + 1}", i % 3 == 0) for i in range(0, 300, 2)]  # chains of two
    pairs += [ev.Pair("q1", "q2", False), ev.Pair("q3", "q4", True)]  # one component of six questions
    splits = verify_train.split_by_question(pairs)
    home: dict[str, str] = {}
    for name, group in splits.items():
        for pair in group:
            for text in (pair.text_a, pair.text_b):
                assert home.setdefault(text, name) == name
    assert sum(len(g) for g in splits.values()) == len(pairs) and all(splits.values())
    assert verify_train.split_by_question(pairs) == splits


def test_balanced_keeps_every_duplicate_and_as_many_others() -> None:
    pairs = [ev.Pair(f"a{i}", f"b{i}", i < 3) for i in range(10)]
    sample = verify_train.balanced(pairs)
    assert sum(p.label for p in sample) == 3 and len(sample) == 6


def test_best_threshold_takes_the_most_recall_that_reaches_the_target() -> None:
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    label = np.array([True, True, False, True, False])
    assert verify_train.best_threshold(score, label, 0.75, 0.0) == (3, 0.6)
    assert verify_train.best_threshold(score, label, 1.0, 0.0) == (2, 0.8)
    assert verify_train.best_threshold(score, label, 0.75, 1.645) is None  # five pairs are too few to be confident


def test_bench_times_the_verifier() -> None:
    pairs = [ev.Pair("How do I learn Python?", "How can I learn Python fast?", True)] * 5
    row = verify_bench.verifier_row(vf.default_model(), pairs, runs=1)
    assert 0.0 < row.p50_ms <= row.p99_ms


def test_texts_without_words_are_scored_without_error() -> None:
    verdict = vf.verify("", "?!", 0.5)
    assert 0.0 <= verdict.score <= 1.0
