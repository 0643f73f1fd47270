"""Reproducible training and held-out evaluation of the cache verifier (writes cache/data/verifier.json).

Data: Quora Question Pairs (`qqp/train.jsonl`, 20,000 labelled pairs) split three ways by question:
pairs that share a question (directly or through other pairs) form one component, and a component
goes to train (60%), tune (20%) or test (20%) by a hash of its smallest question, so no question
crosses splits and the split never changes. STS-B train (score >= 4: same) is added to the fitting
data. The model is fitted on train, the operating point chosen on tune, and test is only reported.

Precision is measured as the issue measures it, on equal numbers of duplicates and non-duplicates:
every duplicate of a split and as many non-duplicates, picked by a hash of their texts. The
operating point is the (cosine floor, score threshold) with the most tune recall whose tune
precision reaches the target; `--confidence-z 1.645` asks its one-sided 95% Wilson lower bound
instead (`cache eval`'s rule): at 0.95 that is cosine >= 0.85 + verifier >= 0.900, recall 0.119.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fleetgate.cache import evaluate as ev
from fleetgate.cache import verify as vf

SEED = 0
TRAIN_SHARE, TUNE_SHARE = 60, 20  # percent of components; the rest is the held-out test split
FIT_COSINE_MIN = 0.7  # fit on the pairs a cache could ever verify; far-apart pairs teach nothing
COSINE_FLOORS = (0.7, 0.75, 0.8, 0.85, 0.9)
IDF_MIN_DOCUMENTS = 2  # rarer words get the default (unseen) weight
BOOSTING = {"n_estimators": 200, "max_depth": 3, "learning_rate": 0.1, "subsample": 0.8}
BASELINE_THRESHOLD = 0.9  # the threshold the issue measured QQP at (its baseline)
REPORT_TARGETS = [0.9, 0.92, 0.94, 0.95]  # precisions whose tuned operating points the report compares
NO_VERIFIER = -1.0  # a verifier threshold every score passes
DEFAULT_VECTORS = Path(".fleetgate/verifier-vectors.npz")
DEFAULT_OUT = Path(__file__).parent / "data" / "verifier.json"


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def split_by_question(pairs: list[ev.Pair]) -> dict[str, list[ev.Pair]]:
    """train / tune / test, whole components of the question graph each, by a hash of the component."""
    parent: dict[str, str] = {}

    def root(text: str) -> str:
        while parent.setdefault(text, text) != text:
            parent[text] = parent[parent[text]]
            text = parent[text]
        return text

    for pair in pairs:
        a, b = root(pair.text_a), root(pair.text_b)
        if a != b:
            parent[a] = b
    smallest: dict[str, str] = {}
    for pair in pairs:
        key = root(pair.text_a)
        smallest[key] = min(smallest.get(key, pair.text_a), pair.text_a, pair.text_b)
    splits: dict[str, list[ev.Pair]] = {"train": [], "tune": [], "test": []}
    for pair in pairs:
        bucket = _digest(smallest[root(pair.text_a)]) % 100
        splits["train" if bucket < TRAIN_SHARE else "tune" if bucket < TRAIN_SHARE + TUNE_SHARE else "test"].append(pair)
    return splits


def balanced(pairs: list[ev.Pair]) -> list[ev.Pair]:
    """Every positive and as many negatives (those with the smallest text hashes), as the issue's 500/500 sample."""
    positives = [p for p in pairs if p.label]
    negatives = sorted((p for p in pairs if not p.label), key=lambda p: _digest(p.text_a + "\0" + p.text_b))
    return positives + negatives[: len(positives)]


def stsb_training_pairs(path: Path) -> list[ev.Pair]:
    """Every STS-B row; score >= 4 is the same question (a 3 still differs in something that matters)."""
    with path.open(encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if len(row) >= 7]
    return [ev.Pair(row[5], row[6], float(row[4]) >= ev.STSB_POSITIVE_MIN, "stsb") for row in rows]


def cached_vectors(texts: list[str], path: Path, threads: int) -> dict[str, np.ndarray]:
    """MiniLM vectors of `texts`, computed once and kept in `path` (the model run takes minutes on one core)."""
    vectors: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path, allow_pickle=False) as stored:
            vectors = dict(zip(stored["texts"].tolist(), stored["vectors"]))
    missing = sorted({t for t in texts if t not in vectors}, key=len)  # similar lengths batch with less padding
    if missing:
        from fleetgate.cache.embed import SentenceTransformerEmbedder

        embedder = SentenceTransformerEmbedder(max_threads=threads)
        vectors.update(ev.embed_all(embedder, missing))
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, texts=np.array(list(vectors)), vectors=np.stack(list(vectors.values())))
    return vectors


def idf_table(texts: set[str]) -> tuple[dict[str, float], float]:
    """Inverse document frequency of content words over the fitting texts, and the weight of an unseen word."""
    frequency = Counter(word for text in texts for word in vf.profile(text).content)
    n = len(texts)
    table = {w: round(math.log((n + 1) / (df + 1)) + 1, 3) for w, df in sorted(frequency.items()) if df >= IDF_MIN_DOCUMENTS}
    return table, round(math.log((n + 1) / 2) + 1, 3)


@dataclass(frozen=True, slots=True)
class Scored:
    """A set of pairs with what the operating point needs: cosine, verifier score, label."""

    cosine: np.ndarray
    score: np.ndarray
    label: np.ndarray


class PairFeaturizer:
    """Feature rows of pairs, with each text analysed once."""

    def __init__(self, vectors: dict[str, np.ndarray], idf: dict[str, float], default_idf: float) -> None:
        self._vectors, self._idf, self._default_idf = vectors, idf, default_idf
        self._profiles: dict[str, vf.TextProfile] = {}

    def _profile(self, text: str) -> vf.TextProfile:
        if text not in self._profiles:
            self._profiles[text] = vf.profile(text)
        return self._profiles[text]

    def cosine(self, pair: ev.Pair) -> float:
        return float(self._vectors[pair.text_a] @ self._vectors[pair.text_b])

    def matrix(self, pairs: list[ev.Pair]) -> np.ndarray:
        return np.array([vf.pair_features(self._profile(p.text_a), self._profile(p.text_b), self.cosine(p), self._idf, self._default_idf)
                         for p in pairs], dtype=np.float64).reshape(len(pairs), len(vf.FEATURES))


def export_trees(model: object, depth: int) -> dict[str, object]:
    """scikit-learn's boosted trees as complete trees of `depth` (see VerifierModel), learning rate folded in."""
    internal, leaves = 2**depth - 1, 2**depth
    features, thresholds, values = [], [], []
    for estimator in model.estimators_[:, 0]:  # type: ignore[attr-defined]
        tree = estimator.tree_
        feature, threshold, leaf = [0] * internal, [float("inf")] * internal, [0.0] * leaves

        def fill(node: int, slot: int, level: int, tree=tree, feature=feature, threshold=threshold, leaf=leaf) -> None:
            if level == depth:
                leaf[slot - internal] = float(tree.value[node].ravel()[0]) * model.learning_rate  # type: ignore[attr-defined]
                return
            if tree.children_left[node] == -1:  # a leaf above `depth`: a split that always goes left
                fill(node, 2 * slot + 1, level + 1)
                fill(node, 2 * slot + 2, level + 1)
                return
            feature[slot], threshold[slot] = int(tree.feature[node]), float(tree.threshold[node])
            fill(int(tree.children_left[node]), 2 * slot + 1, level + 1)
            fill(int(tree.children_right[node]), 2 * slot + 2, level + 1)

        fill(0, 0, 0)
        features.append(feature)
        thresholds.append([t if math.isfinite(t) else 1e300 for t in threshold])
        values.append([round(v, 9) for v in leaf])
    return {"depth": depth, "feature": features, "threshold": thresholds, "leaf": values}


def fit(x: np.ndarray, y: np.ndarray) -> object:
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(**BOOSTING, random_state=SEED).fit(x, y)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Outcome:
    pairs: int
    positives: int
    hits: int
    correct: int

    @property
    def precision(self) -> float:
        return self.correct / self.hits if self.hits else 1.0

    @property
    def recall(self) -> float:
        return self.correct / self.positives if self.positives else 0.0

    def row(self, name: str) -> str:
        low, high = ev.wilson_interval(self.correct, self.hits)
        return (f"{name:<52} {self.precision:>9.3f} [{low:.3f}, {high:.3f}] {self.recall:>7.3f} {self.hits:>6} {self.correct:>8}"
                f" {self.positives:>6} {self.pairs:>6}")


def outcome(data: Scored, floor: float, threshold: float) -> Outcome:
    hits = (data.cosine >= floor) & (data.score >= threshold)
    return Outcome(len(data.label), int(data.label.sum()), int(hits.sum()), int(data.label[hits].sum()))


def best_threshold(score: np.ndarray, label: np.ndarray, target: float, z: float) -> tuple[int, float] | None:
    """(correct hits, threshold) of the lowest score threshold whose precision reaches `target`.

    With z > 0 the precision's one-sided Wilson lower bound at that z must reach it (`cache eval`'s
    rule at z = 1.645); z = 0 asks the measured precision.
    """
    order = np.argsort(-score, kind="stable")
    ranked, correct = score[order], np.cumsum(label[order])
    best = None
    for rank in range(len(ranked)):
        if ranked[rank] == -np.inf:
            break
        last_of_its_score = rank + 1 == len(ranked) or ranked[rank + 1] < ranked[rank]
        if last_of_its_score and ev.wilson_lower_bound(int(correct[rank]), rank + 1, z) >= target:
            best = (int(correct[rank]), float(ranked[rank]))
    return best


def choose_operating_point(tune: Scored, target: float, z: float) -> vf.OperatingPoint | None:
    """The cosine floor and verifier threshold with the most tune recall whose precision reaches `target`."""
    best: tuple[int, vf.OperatingPoint] | None = None
    for floor in COSINE_FLOORS:
        found = best_threshold(np.where(tune.cosine >= floor, tune.score, -np.inf), tune.label, target, z)
        if found is not None and (best is None or found[0] > best[0]):
            best = (found[0], vf.OperatingPoint(floor, found[1]))
    return best[1] if best else None


def case_scores(cases: list[ev.Pair], vectors: dict[str, np.ndarray], model: vf.VerifierModel) -> Scored:
    """semantic-router cases in one namespace: each paraphrase meets its nearest original.

    The label is "the nearest original is its own": a hit on another case's original is a wrong hit.
    """
    originals = list(dict.fromkeys(p.text_a for p in cases))
    matrix = np.stack([vectors[t] for t in originals])
    cosines, scores, correct = [], [], []
    for pair in cases:
        similarities = matrix @ vectors[pair.text_b]
        nearest = int(np.argmax(similarities))
        cosines.append(float(similarities[nearest]))
        scores.append(model.score(pair.text_b, originals[nearest], cosines[-1]))
        correct.append(originals[nearest] == pair.text_a)
    return Scored(np.array(cosines), np.array(scores), np.array(correct))


@dataclass(frozen=True, slots=True)
class Setting:
    """A way to decide hits: cosine >= floor, and verifier score >= threshold (NO_VERIFIER: none)."""

    name: str
    floor: float
    threshold: float


def tuned_settings(tune: Scored, targets: list[float], z: float) -> list[Setting]:
    """Per target precision, the cosine threshold alone and cosine + verifier, both chosen on tune by the same rule."""
    settings = [Setting(f"cosine >= {BASELINE_THRESHOLD} alone (the issue's baseline)", BASELINE_THRESHOLD, NO_VERIFIER)]
    for target in targets:
        cosine_only = best_threshold(tune.cosine, tune.label, target, z)
        if cosine_only is not None:
            settings.append(Setting(f"P{target}: cosine >= {cosine_only[1]:.3f} alone", cosine_only[1], NO_VERIFIER))
        point = choose_operating_point(tune, target, z)
        if point is not None:
            settings.append(Setting(f"P{target}: cosine >= {point.cosine_floor} + verifier >= {point.threshold:.3f}",
                                    point.cosine_floor, point.threshold))
    return settings


class Trained:
    """The fitted booster with the featurizer (and IDF table) its rows come from."""

    def __init__(self, fitting: list[ev.Pair], vectors: dict[str, np.ndarray]) -> None:
        self.idf, self.default_idf = idf_table({t for p in fitting for t in (p.text_a, p.text_b)})
        self.featurizer = PairFeaturizer(vectors, self.idf, self.default_idf)
        x = self.featurizer.matrix(fitting)
        near = x[:, 0] >= FIT_COSINE_MIN
        self.booster = fit(x[near], np.array([p.label for p in fitting])[near])
        self._check_rows = x[near][:500]  # what the exported trees must score as scikit-learn does

    def scored(self, pairs: list[ev.Pair]) -> Scored:
        rows = self.featurizer.matrix(pairs)
        return Scored(rows[:, 0], self.booster.predict_proba(rows)[:, 1], np.array([p.label for p in pairs]))  # type: ignore[attr-defined]

    def spec(self, point: vf.OperatingPoint, how_chosen: dict[str, object], trained_on: dict[str, object]) -> dict[str, object]:
        """The JSON VerifierModel reads; checked against scikit-learn's own scores before it is returned."""
        prior = float(self.booster.init_.class_prior_[1])  # type: ignore[attr-defined]  # the trees start from the prior's log-odds
        spec = {
            "format": vf.MODEL_FORMAT, "features": list(vf.FEATURES), "bias": math.log(prior / (1 - prior)),
            "trees": export_trees(self.booster, BOOSTING["max_depth"]),  # type: ignore[arg-type]
            "operating_point": {"cosine_floor": point.cosine_floor, "threshold": round(point.threshold, 6), **how_chosen},
            "idf": self.idf, "default_idf": self.default_idf,
            "trained_on": {**trained_on, "fit_cosine_min": FIT_COSINE_MIN, "boosting": BOOSTING, "seed": SEED},
        }
        model = vf.VerifierModel(spec)
        exported = np.array([model.raw(list(row)) for row in self._check_rows])
        assert np.allclose(exported, self.booster.decision_function(self._check_rows), atol=1e-6), "exported trees disagree with scikit-learn"  # type: ignore[attr-defined]
        return spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This tool's options, on its own parser or on `fleetgate cache train-verifier`'s."""
    parser.add_argument("--traces", type=Path, default=Path("../shared/traces"), help="directory with qqp/, stsb/ and semantic_router/")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the model JSON (default: the shipped one)")
    parser.add_argument("--vectors-cache", type=Path, default=DEFAULT_VECTORS, help=f"MiniLM vectors kept between runs (default {DEFAULT_VECTORS})")
    parser.add_argument("--target-precision", type=float, default=0.95, help="precision the shipped operating point must reach on tune")
    parser.add_argument("--confidence-z", type=float, default=0.0,
                        help="0: measured tune precision; 1.645: its one-sided 95%% Wilson lower bound (cache eval's rule)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the one-time embedding run")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="verify_train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Train, choose the operating point on tune, write the model, print the held-out tables."""
    started = time.perf_counter()

    splits = split_by_question(ev.read_pairs(args.traces / "qqp" / "train.jsonl"))
    sts_train = stsb_training_pairs(args.traces / "stsb" / "sts-train.csv")
    sts_dev = ev.stsb_pairs(args.traces / "stsb" / "sts-dev.csv")
    cases, _ = ev.cache_case_pairs(args.traces / "semantic_router" / "cache_cases.json")
    every_pair = [p for group in (*splits.values(), sts_train, sts_dev, cases) for p in group]
    vectors = cached_vectors([t for p in every_pair for t in (p.text_a, p.text_b)], args.vectors_cache, args.threads)

    trained = Trained(splits["train"] + sts_train, vectors)
    tune = trained.scored(balanced(splits["tune"]))
    point = choose_operating_point(tune, args.target_precision, args.confidence_z)
    if point is None:
        raise SystemExit(f"no operating point reaches precision {args.target_precision} on the tune split (z {args.confidence_z})")
    spec = trained.spec(point, {"target_precision": args.target_precision, "confidence_z": args.confidence_z,
                                "rule": "most recall on the balanced QQP tune split whose precision (its Wilson lower bound at z) reaches the target"},
                        {"qqp_train_split_pairs": len(splits["train"]), "stsb_train_pairs": len(sts_train)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(spec, separators=(",", ":")) + "\n", encoding="utf-8")

    settings = tuned_settings(tune, sorted({*REPORT_TARGETS, args.target_precision}), args.confidence_z)
    print("split (pairs, duplicates): " + ", ".join(f"{k} {len(v)} ({sum(p.label for p in v)})" for k, v in splits.items()))
    print(f"operating points chosen on the balanced tune split (z {args.confidence_z}), judged on data never tuned on;"
          f" shipped: cosine >= {point.cosine_floor} + verifier >= {point.threshold:.3f} (target {args.target_precision})")
    print(table("QQP held-out test, balanced (every duplicate, as many non-duplicates)", trained.scored(balanced(splits["test"])), settings))
    print(table("QQP held-out test, natural mix", trained.scored(splits["test"]), settings))
    print(table("STS-B dev (score >= 4 similar, <= 2 not)", trained.scored(sts_dev), settings))
    print(table("semantic-router cache cases (one namespace, nearest original)", case_scores(cases, vectors, vf.VerifierModel(spec)), settings))
    importances = sorted(zip(vf.FEATURES, trained.booster.feature_importances_), key=lambda item: -item[1])  # type: ignore[attr-defined]
    print("\nfeature importance (share of impurity decrease):\n" + "\n".join(f"  {name:<22} {share:.3f}" for name, share in importances))
    print(f"\nwrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - started:.0f} s")
    return 0


def table(title: str, data: Scored, settings: list[Setting]) -> str:
    header = f"{'':<52} {'precision [95% CI]':>26} {'recall':>7} {'hits':>6} {'correct':>8} {'dups':>6} {'pairs':>6}"
    return "\n".join(["", title + ":", header, *(outcome(data, s.floor, s.threshold).row(s.name) for s in settings)])


if __name__ == "__main__":
    raise SystemExit(main())
