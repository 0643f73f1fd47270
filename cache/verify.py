"""Verification of semantic-cache candidates: does a cached question ask what the query asks?

A bi-encoder cosine cannot see that two questions differ in one number, name, negation or word
order, and on Quora Question Pairs those are most of the near-misses a threshold lets through. So a
candidate the index found is checked by a small learned model over cheap pair features (the cosine
the search already has, lexical overlap and the mismatches above) before it is served.

Inference is plain numpy and Python, no model download: the weights are gradient-boosted trees in
a JSON file (cache/data/verifier.json, produced by cache/verify_train.py), evaluated all at once as
complete binary trees of one depth. One verification, both texts analysed, costs about 0.15 ms
(p99 0.3 ms) on one CPU core: `python -m fleetgate.cache.verify_bench`. The cache applies the
operating point's cosine floor itself (its similarity threshold); `verify` only judges the pair.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Mapping

import numpy as np

MODEL_FORMAT = "fleetgate-verifier-gbdt/1"

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_RAW_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'+#-]*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
NEGATIONS = frozenset({"not", "no", "never", "without", "none", "nobody", "nothing", "nor", "cannot", "neither", "nowhere"})
QUESTION_WORDS = frozenset({"what", "why", "how", "which", "who", "whom", "whose", "when", "where"})
# Words whose presence on one side only rarely changes the question; the rest are "content".
STOP_WORDS = frozenset("""
a an the of to in on for and or is are was were be been being do does did i you he she it we they me my your his her its our
their this that these those there here can could should would will shall may might must at by from with about as into than
then so if any some one s t have has had am get best good way ways
""".split()) | QUESTION_WORDS
_SUFFIXES = ("ing", "ed", "es", "s", "ly")


def stem(word: str) -> str:
    """Crude suffix stripping, enough to match "exercise"/"exercising" and "dollar"/"dollars"."""
    if len(word) > 4:
        for suffix in _SUFFIXES:
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                return word[: -len(suffix)]
    return word


@dataclass(frozen=True, slots=True)
class TextProfile:
    """What the pair features need of one text, computed once per text."""

    sequence: tuple[str, ...]  # stemmed words in order
    words: frozenset[str]
    content: frozenset[str]  # words minus STOP_WORDS
    bigrams: frozenset[tuple[str, str]]
    trigrams: frozenset[str]  # character 3-grams of the lowercased text
    names: frozenset[str]  # capitalised words after the first (names, products, places), lowercased
    numbers: frozenset[str]
    negated: bool
    question_words: tuple[str, ...]
    length: int  # words


def profile(text: str) -> TextProfile:
    lowered = text.lower()
    raw_words = _WORD.findall(lowered)
    sequence = tuple(stem(w.removesuffix("'s")) for w in raw_words)
    capitalised = (w.lower() for w in _RAW_WORD.findall(text)[1:] if w[0].isupper())
    return TextProfile(
        sequence=sequence,
        words=frozenset(sequence),
        content=frozenset(s for w, s in zip(raw_words, sequence) if w not in STOP_WORDS),
        bigrams=frozenset(zip(sequence, sequence[1:])),
        trigrams=frozenset(lowered[i : i + 3] for i in range(len(lowered) - 2)),
        names=frozenset(w for w in capitalised if w not in STOP_WORDS),
        numbers=frozenset(_NUMBER.findall(text)),
        negated=any(w in NEGATIONS or w.endswith("n't") for w in raw_words),
        question_words=tuple(w for w in raw_words if w in QUESTION_WORDS),
        length=len(raw_words),
    )


def _jaccard(a: frozenset, b: frozenset) -> float:  # type: ignore[type-arg]
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def _unmatched_names(names: frozenset[str], other: TextProfile) -> int:
    """Names of one text that the other does not mention in any case or inflection."""
    return sum(1 for n in names if n not in other.words and stem(n) not in other.words)


def _order_inversions(a: TextProfile, b: TextProfile, shared: frozenset[str]) -> float:
    """Share of shared content-word pairs that the two texts put in opposite order ("A to B" vs "B to A")."""
    position = {w: i for i, w in enumerate(w for w in dict.fromkeys(b.sequence) if w in shared)}
    order = [position[w] for w in dict.fromkeys(a.sequence) if w in shared]
    n = len(order)
    if n < 2:
        return 0.0
    inverted = sum(1 for i in range(n) for j in range(i + 1, n) if order[i] > order[j])
    return inverted / (n * (n - 1) / 2)


FEATURES: tuple[str, ...] = (
    "cosine", "word_jaccard", "containment_min", "containment_max", "content_jaccard", "content_diff_min",
    "content_diff_max", "char3_jaccard", "bigram_jaccard", "order_inversions", "number_mismatch", "name_mismatch",
    "negation_mismatch", "qword_first_mismatch", "qword_set_mismatch", "idf_diff_min", "idf_diff_max",
    "idf_diff_top", "idf_shared_share", "length_ratio", "length_log",
)


def pair_features(a: TextProfile, b: TextProfile, cosine: float, idf: Mapping[str, float], default_idf: float) -> list[float]:
    """The FEATURES of a pair, in order; symmetric in a and b except through `cosine`."""
    shared_words = len(a.words & b.words)
    contained_a = shared_words / len(a.words) if a.words else 1.0
    contained_b = shared_words / len(b.words) if b.words else 1.0
    shared = a.content & b.content
    only_a = [idf.get(w, default_idf) for w in a.content - b.content]
    only_b = [idf.get(w, default_idf) for w in b.content - a.content]
    shared_weight = 2 * sum(idf.get(w, default_idf) for w in shared)
    total_weight = sum(only_a) + sum(only_b) + shared_weight
    return [
        cosine,
        _jaccard(a.words, b.words),
        min(contained_a, contained_b),
        max(contained_a, contained_b),
        _jaccard(a.content, b.content),
        min(len(only_a), len(only_b)),
        max(len(only_a), len(only_b)),
        _jaccard(a.trigrams, b.trigrams),
        _jaccard(a.bigrams, b.bigrams),
        _order_inversions(a, b, shared),
        len(a.numbers ^ b.numbers),
        _unmatched_names(a.names, b) + _unmatched_names(b.names, a),
        float(a.negated != b.negated),
        float(a.question_words[:1] != b.question_words[:1]),
        float(set(a.question_words) != set(b.question_words)),
        min(sum(only_a), sum(only_b)),
        max(sum(only_a), sum(only_b)),
        max(only_a + only_b, default=0.0),
        shared_weight / total_weight if total_weight else 1.0,
        min(a.length, b.length) / max(a.length, b.length, 1),
        math.log1p(a.length + b.length),
    ]


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """Where the verifier is used: candidates at or above `cosine_floor` are served when score >= `threshold`."""

    cosine_floor: float
    threshold: float


@dataclass(frozen=True, slots=True)
class Verdict:
    score: float  # estimated probability that the candidate asks the same thing
    accepted: bool


class VerifierModel:
    """Frozen gradient-boosted trees over FEATURES, read from the JSON that verify_train.py writes.

    Trees are stored complete (every leaf at `depth`; shallower sklearn leaves are padded with splits
    that always go left), so all trees advance one level per numpy step. Splits go left when the
    float32 feature is <= the threshold, as in scikit-learn.
    """

    def __init__(self, spec: Mapping[str, object]) -> None:
        if spec.get("format") != MODEL_FORMAT:
            raise ValueError(f"not a verifier model: format {spec.get('format')!r}, expected {MODEL_FORMAT!r}")
        if tuple(spec["features"]) != FEATURES:  # type: ignore[arg-type]
            raise ValueError("the model's features differ from this code's FEATURES: retrain it (cache/verify_train.py)")
        trees = spec["trees"]
        assert isinstance(trees, dict)
        self.depth = int(trees["depth"])
        feature = np.asarray(trees["feature"], dtype=np.intp)  # (trees, 2**depth - 1)
        self._feature = feature.ravel()
        self._threshold = np.asarray(trees["threshold"], dtype=np.float64).ravel()
        self._leaf = np.asarray(trees["leaf"], dtype=np.float64).ravel()  # (trees, 2**depth), learning rate folded in
        self._first_node = np.arange(len(feature)) * feature.shape[1]  # flat index of each tree's root
        self._first_leaf = np.arange(len(feature)) * (2**self.depth) - (2**self.depth - 1)
        self.bias = float(spec["bias"])  # type: ignore[arg-type]
        self.idf: dict[str, float] = dict(spec["idf"])  # type: ignore[call-overload]
        self.default_idf = float(spec["default_idf"])  # type: ignore[arg-type]
        point = spec["operating_point"]
        assert isinstance(point, dict)
        self.operating_point = OperatingPoint(float(point["cosine_floor"]), float(point["threshold"]))

    @classmethod
    def load(cls, path: str | Path) -> VerifierModel:
        return cls(json.loads(Path(path).read_text(encoding="utf-8")))

    def raw(self, features: list[float]) -> float:
        """Log-odds of "same question" for one feature vector."""
        x = np.asarray(features, dtype=np.float32).astype(np.float64)
        node = np.zeros(len(self._first_node), dtype=np.intp)
        for _ in range(self.depth):
            flat = self._first_node + node
            node = 2 * node + 1 + (x.take(self._feature.take(flat)) > self._threshold.take(flat))
        return self.bias + float(self._leaf.take(self._first_leaf + node).sum())

    def score_profiles(self, query: TextProfile, candidate: TextProfile, cosine: float) -> float:
        return 1.0 / (1.0 + math.exp(-self.raw(pair_features(query, candidate, cosine, self.idf, self.default_idf))))

    def score(self, query: str, candidate: str, cosine: float) -> float:
        """Probability-like score in [0, 1] that `candidate` asks what `query` asks."""
        return self.score_profiles(profile(query), profile(candidate), cosine)

    def verify(self, query: str, candidate: str, cosine: float, threshold: float | None = None) -> Verdict:
        """The score and whether it reaches `threshold` (default: the shipped operating point's)."""
        value = self.score(query, candidate, cosine)
        return Verdict(value, value >= (self.operating_point.threshold if threshold is None else threshold))


def shipped_model_path() -> Path:
    return Path(str(resources.files("fleetgate.cache") / "data" / "verifier.json"))


@cache
def default_model() -> VerifierModel:
    """The shipped model, read once per process."""
    return VerifierModel.load(shipped_model_path())


def verify(query: str, candidate: str, cosine: float, threshold: float | None = None) -> Verdict:
    """Check a cache candidate with the shipped model (see VerifierModel.verify)."""
    return default_model().verify(query, candidate, cosine, threshold)
