"""`fleetgate cache eval`: how often the cache answers, and how often wrongly, at given thresholds.

Method (per category namespace, as the cache does it): every `text_a` is cached, every `text_b` is
looked up; the top neighbour is a hit when its similarity reaches the category's threshold, and a
*correct* hit when the cached text is the same question (normalised) or a pair labels the two
similar. Precision is correct hits / hits, recall correctly answered similar pairs / similar pairs,
hit rate hits / lookups. With a verifier, each lookup's neighbour also carries the verifier's score,
and a category may ask it to reach a verifier threshold too (cache/calibrate.py chooses both).

Threshold tuning: the nearest neighbour of a lookup does not depend on the threshold, so one search
per lookup gives (similarity, correct) and every threshold is evaluated by sorting. Per category,
the lowest threshold whose precision on the tuning split reaches the target is chosen; the uniform
baseline is the lowest single threshold that reaches it over all categories together.
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from fleetgate.cache.embed import Embedder
from fleetgate.cache.index import VectorIndex
from fleetgate.cache.keys import normalise
from fleetgate.cache.verify import VerifierModel

STSB_POSITIVE_MIN = 4.0
STSB_NEGATIVE_MAX = 2.0
EMBED_BATCH = 64
WILSON_Z = 1.645  # one-sided 95%
WILSON_TWO_SIDED_Z = 1.96  # the 95% interval reported next to a precision
GENRE_ALIASES = {"forums": "forum"}  # sts-dev spells the genre main-forums, sts-train main-forum


@dataclass(frozen=True, slots=True)
class Pair:
    text_a: str
    text_b: str
    label: bool  # True: text_b may be answered with text_a's cached answer
    category: str = "default"


@dataclass(frozen=True, slots=True)
class Probe:
    """One lookup's nearest neighbour: everything a threshold needs to classify it."""

    category: str
    similarity: float
    correct: bool  # the neighbour's answer fits: same text, or a text labelled similar to the lookup
    positive: bool  # the lookup's own pair is labelled similar (it should hit)
    verifier: float | None = None  # the verifier's score of (lookup, neighbour); None: not scored

    def hits(self, threshold: float, verifier_threshold: float | None = None) -> bool:
        """A hit at this cosine threshold and, unless None, this verifier threshold."""
        if self.similarity < threshold:
            return False
        if verifier_threshold is None:
            return True
        if self.verifier is None:
            raise ValueError("a verifier threshold was asked of probes made without a verifier model")
        return self.verifier >= verifier_threshold


@dataclass(frozen=True, slots=True)
class Scores:
    lookups: int
    positives: int
    hits: int
    correct_hits: int
    recalled: int  # similar pairs answered correctly

    @property
    def precision(self) -> float:
        return self.correct_hits / self.hits if self.hits else 1.0

    @property
    def recall(self) -> float:
        return self.recalled / self.positives if self.positives else 0.0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def as_dict(self) -> dict[str, object]:
        low, high = wilson_interval(self.correct_hits, self.hits)
        return {"lookups": self.lookups, "positives": self.positives, "hits": self.hits, "correct_hits": self.correct_hits, "recalled": self.recalled,
                "precision": round(self.precision, 4), "precision_ci95": [round(low, 4), round(high, 4)],
                "recall": round(self.recall, 4), "hit_rate": round(self.hit_rate, 4)}


# ---- pair sources -----------------------------------------------------------------------------------


def stsb_pairs(path: Path) -> list[Pair]:
    """STS-B rows (genre, source, year, id, score, s1, s2): genre is the category, >= 4 similar, <= 2 not, between dropped."""
    pairs = []
    with path.open(encoding="utf-8") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 7:
                continue
            score = float(row[4])
            if STSB_NEGATIVE_MAX < score < STSB_POSITIVE_MIN:
                continue
            genre = row[0].removeprefix("main-")
            pairs.append(Pair(row[5], row[6], score >= STSB_POSITIVE_MIN, GENRE_ALIASES.get(genre, genre)))
    return pairs


def cache_case_pairs(path: Path) -> tuple[list[Pair], dict[str, float]]:
    """semantic-router cache cases: each original is cached, each of its paraphrases looked up.

    Each pair carries its case's category (the file's "other" is whatever a policy's default
    category is). The experiments cache all originals in one namespace (`probe_shared(...,
    one_namespace=True)`), so a paraphrase that lands on another case's original is a wrong hit.
    Also returns the thresholds the file declares per category ("... (0.8)").
    """
    cases = json.loads(path.read_text(encoding="utf-8"))
    declared = {}
    pairs = []
    for case in cases:
        found = re.search(r"\((0\.\d+)\)", case.get("description", ""))
        if found:
            declared[case["category"]] = float(found.group(1))
        pairs += [Pair(case["original_question"], question, True, case["category"]) for question in case["similar_questions"]]
    return pairs, declared


def read_pairs(path: Path) -> list[Pair]:
    """JSON lines {"text_a", "text_b", "label", "category"?}."""
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            pairs.append(Pair(row["text_a"], row["text_b"], bool(row["label"]), row.get("category") or "default"))
    return pairs


def write_pairs(pairs: Iterable[Pair], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for pair in pairs:
            handle.write(json.dumps({"text_a": pair.text_a, "text_b": pair.text_b, "label": pair.label, "category": pair.category}) + "\n")


# ---- probing ----------------------------------------------------------------------------------------


def embed_all(embedder: Embedder, texts: list[str], *, progress: bool = True) -> dict[str, np.ndarray]:
    """Unit vectors of the unique texts, in batches, with a progress bar."""
    from tqdm import tqdm

    unique = list(dict.fromkeys(texts))
    vectors = []
    for start in tqdm(range(0, len(unique), EMBED_BATCH), desc="embedding", unit="batch", disable=not progress):
        vectors.append(embedder.embed(unique[start : start + EMBED_BATCH]))
    stacked = np.concatenate(vectors) if vectors else np.zeros((0, embedder.dim), dtype=np.float32)
    return dict(zip(unique, stacked))


def _verifier_score(model: VerifierModel | None, asked: str, cached: str, similarity: float) -> float | None:
    return None if model is None else model.score(asked, cached, similarity)


def probe_pairs(pairs: list[Pair], vectors: dict[str, np.ndarray], model: VerifierModel | None = None) -> list[Probe]:
    """Each pair alone: text_a cached in a namespace of its own, text_b looked up; the label judges the hit.

    With `model`, each probe also carries the verifier's score of the pair.
    """
    probes = []
    for p in pairs:
        similarity = float(vectors[p.text_a] @ vectors[p.text_b])
        probes.append(Probe(p.category, similarity, p.label, p.label, _verifier_score(model, p.text_b, p.text_a, similarity)))
    return probes


def probe_shared(pairs: list[Pair], vectors: dict[str, np.ndarray], dim: int, model: VerifierModel | None = None,
                 *, one_namespace: bool = False) -> tuple[list[Probe], list[float]]:
    """Every text_a of a category (with `one_namespace`: of all pairs) in one namespace, every text_b looked
    up; also returns search latencies (s). Probes keep their pair's category.

    A hit is correct when the cached text is the lookup's own text (normalised) or some pair labels
    the two similar; a neighbour never compared with the lookup counts as wrong, so this precision is
    a lower bound (STS-B reuses sentences across pairs, and many near-duplicates were never labelled).
    With `model`, the verifier scores the top neighbour only (the cache would try the next ones too).
    """
    probes: list[Probe] = []
    latencies: list[float] = []
    similar = {(normalise(p.text_a), normalise(p.text_b)) for p in pairs if p.label}
    namespaces: dict[str, list[Pair]] = {}
    for pair in pairs:
        namespaces.setdefault("" if one_namespace else pair.category, []).append(pair)
    for _, group in sorted(namespaces.items()):
        cached = list(dict.fromkeys(p.text_a for p in group))
        index = VectorIndex.build(cached, np.stack([vectors[t] for t in cached]), dim=dim)
        for pair in group:
            started = time.perf_counter()
            found = index.search(vectors[pair.text_b], 1, -1.0)
            latencies.append(time.perf_counter() - started)
            nearest, asked = normalise(found[0].entry_id), normalise(pair.text_b)
            correct = nearest == asked or (nearest, asked) in similar or (asked, nearest) in similar
            verifier = _verifier_score(model, pair.text_b, found[0].entry_id, found[0].similarity)
            probes.append(Probe(pair.category, found[0].similarity, correct, pair.label, verifier))
    return probes, latencies


def score(probes: Iterable[Probe], threshold: float, verifier_threshold: float | None = None) -> Scores:
    probes = list(probes)
    hits = [p for p in probes if p.hits(threshold, verifier_threshold)]
    return Scores(len(probes), sum(p.positive for p in probes), len(hits), sum(p.correct for p in hits),
                  sum(p.correct and p.positive for p in hits))


def wilson_interval(correct: int, total: int, z: float = WILSON_TWO_SIDED_Z) -> tuple[float, float]:
    """Wilson score interval of a precision measured as correct/total ((0, 1) when nothing was measured)."""
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    denominator = 1 + z * z / total
    centre = p + z * z / (2 * total)
    margin = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return (centre - margin) / denominator, (centre + margin) / denominator


def wilson_lower_bound(correct: int, total: int, z: float = WILSON_Z) -> float:
    """One-sided lower confidence bound of a precision measured as correct/total (0 when nothing was measured)."""
    return wilson_interval(correct, total, z)[0]


def lowest_threshold(probes: list[Probe], target_precision: float, *, confident: bool = True) -> float | None:
    """The lowest threshold (most hits) whose precision reaches the target, or None when none does.

    With `confident`, the precision's 95% one-sided Wilson lower bound must reach the target, so a
    threshold picked on a few lucky hits does not carry over to unseen traffic.
    """
    ordered = sorted(probes, key=lambda p: -p.similarity)
    best = None
    correct = 0
    for rank, p in enumerate(ordered, start=1):
        correct += p.correct
        last_at_this_similarity = rank == len(ordered) or ordered[rank].similarity < p.similarity
        precision = wilson_lower_bound(correct, rank) if confident else correct / rank
        if last_at_this_similarity and precision >= target_precision:
            best = p.similarity
    return best


def by_category(probes: list[Probe]) -> dict[str, list[Probe]]:
    grouped: dict[str, list[Probe]] = {}
    for p in probes:
        grouped.setdefault(p.category, []).append(p)
    return grouped


DISABLED = 1.01  # a threshold no cosine similarity reaches: the category is not cached


def tune(probes: list[Probe], target_precision: float) -> tuple[dict[str, float], float]:
    """Per-category thresholds (DISABLED where the target is unreachable) and the best uniform one."""
    per_category = {c: lowest_threshold(group, target_precision) or DISABLED for c, group in by_category(probes).items()}
    return per_category, lowest_threshold(probes, target_precision) or DISABLED


def score_per_category(probes: list[Probe], thresholds: Mapping[str, float], default: float,
                       verifier_thresholds: Mapping[str, float] | None = None) -> tuple[dict[str, Scores], Scores]:
    """Scores per category and overall; a category in `verifier_thresholds` also needs the verifier to pass."""
    grouped = by_category(probes)
    verifier_thresholds = verifier_thresholds or {}
    scores = {c: score(group, thresholds.get(c, default), verifier_thresholds.get(c)) for c, group in sorted(grouped.items())}
    total = Scores(*(sum(getattr(s, f) for s in scores.values()) for f in ("lookups", "positives", "hits", "correct_hits", "recalled")))
    return scores, total


def uniform_at_precision(probes: list[Probe], precision: float) -> tuple[float, Scores]:
    """The uniform threshold with the most hits whose measured precision on `probes` is at least `precision`."""
    threshold = lowest_threshold(probes, precision, confident=False) or DISABLED
    return threshold, score(probes, threshold)


def latency_summary(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 4), "p99_ms": round(float(np.percentile(ms, 99)), 4)}


def embedding_latencies(embedder: Embedder, texts: list[str], samples: int = 100) -> list[float]:
    """Single-query embedding times (the miss cost a lone request pays)."""
    latencies = []
    for text in texts[:samples]:
        started = time.perf_counter()
        embedder.embed([text])
        latencies.append(time.perf_counter() - started)
    return latencies


# ---- reports ----------------------------------------------------------------------------------------


def evaluate(probes: list[Probe], thresholds: Mapping[str, float], default: float,
             verifier_thresholds: Mapping[str, float] | None = None) -> dict[str, object]:
    """Per-category and overall scores at the given thresholds (and verifier thresholds, where given)."""
    scores, total = score_per_category(probes, thresholds, default, verifier_thresholds)
    return {
        "thresholds": {c: thresholds.get(c, default) for c in scores},
        "verifier_thresholds": {c: (verifier_thresholds or {}).get(c) for c in scores},
        "per_category": {c: s.as_dict() for c, s in scores.items()},
        "overall": total.as_dict(),
    }


def tuned_report(train: list[Probe], test: list[Probe], target_precision: float) -> dict[str, object]:
    """Thresholds tuned on `train`, judged on `test`: per category vs a uniform threshold.

    Two baselines: the uniform threshold chosen on `train` by the same rule (a fair, deployable
    comparison), and the uniform threshold that reaches the per-category scheme's *test* precision
    with the most hits (an oracle that has seen the test split: the "equal precision" comparison).
    """
    per_category, uniform = tune(train, target_precision)
    _, category_total = score_per_category(test, per_category, DISABLED)
    _, train_total = score_per_category(train, per_category, DISABLED)
    uniform_total = score(test, uniform)
    equal_threshold, equal_total = uniform_at_precision(test, category_total.precision)
    train_equal_threshold, train_equal = uniform_at_precision(train, train_total.precision)
    return {
        "target_precision": target_precision,
        "rule": "lowest threshold whose precision's one-sided 95% Wilson lower bound on train >= target",
        "per_category_thresholds": evaluate(test, per_category, DISABLED),
        "uniform_tuned_on_train": {"threshold": round(uniform, 4), "overall": uniform_total.as_dict()},
        "hit_rate_gain_vs_uniform_tuned": round(category_total.hit_rate - uniform_total.hit_rate, 4),
        "train_at_equal_precision": {
            "per_category": train_total.as_dict(),
            "uniform": {"threshold": round(train_equal_threshold, 4), **train_equal.as_dict()},
            "hit_rate_gain": round(train_total.hit_rate - train_equal.hit_rate, 4),
        },
        "dev_oracle_uniform_at_equal_precision": {
            "threshold": round(equal_threshold, 4),
            "overall": equal_total.as_dict(),
            "hit_rate_gain": round(category_total.hit_rate - equal_total.hit_rate, 4),
        },
    }

