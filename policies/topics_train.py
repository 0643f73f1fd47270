"""Reproducible training of the MMLU-Pro topic head (`fleetgate policy train-topics`).

Data: the Semantic Router's 14 x 15 MMLU-Pro exemplars (`mmlu_pro_labels.json`) and the 14 x 60
questions written for this project (`policies/topic_data/written_train.json`). The held-out set
(`written_heldout.json`, 14 x 20, written separately, in other phrasings) is never read here:
`fleetgate policy eval-topics` judges the shipped head on it.

Each question is cut to the tail the gateway embeds (`TEXT_CHARS`) and embedded once with
all-MiniLM-L6-v2 (cached in .fleetgate/). The head is L2-penalised multinomial logistic regression
(scikit-learn, lbfgs: deterministic). On 5-fold cross-validated logits of the training data, in
turn: the keyword boost (added to the logit of each domain whose fragment keywords the question
contains) with the best accuracy, the temperature with the least log loss (calibration), and the
abstention floor (top probability below which a question goes to `other`) with the best accuracy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from fleetgate.policies.topic_eval import LabelledQuestion, read_labelled
from fleetgate.policies.topics import BUILTIN_FRAGMENT, OTHER_DOMAIN, DomainKeywords, TopicHead, load_fragment

DATA = Path(__file__).parent / "topic_data"
WRITTEN_TRAIN = DATA / "written_train.json"
HELDOUT = DATA / "written_heldout.json"
DEFAULT_LABELS = Path(__file__).resolve().parents[2] / "shared" / "traces" / "semantic_router" / "mmlu_pro_labels.json"
DEFAULT_VECTORS = Path(".fleetgate/topic-vectors.npz")
TEXT_CHARS = 400  # the classifier's default topic_text_chars: train on what the gateway embeds
C = 2.0  # inverse L2 strength; 1-5 are within 0.5 points in cross-validation
FOLDS = 5
BOOSTS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
TEMPERATURES = np.round(np.arange(0.1, 3.01, 0.05), 2)
FLOORS = np.round(np.arange(0.0, 0.61, 0.02), 2)


def fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights (classes, dim) and bias of the logistic regression; every class must occur in `y`."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, max_iter=5000).fit(x, y)
    return model.coef_.astype(np.float32), model.intercept_.astype(np.float32)


def fold_of(text: str) -> int:
    """A fixed fold per question (a hash of its text), so the cross-validation never changes."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % FOLDS


def cross_validated_logits(x: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    logits = np.zeros((len(y), int(y.max()) + 1), dtype=np.float32)
    for fold in range(FOLDS):
        held = folds == fold
        weights, bias = fit(x[~held], y[~held])
        logits[held] = x[held] @ weights.T + bias
    return logits


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def abstained(probabilities: np.ndarray, floor: float, other: int) -> np.ndarray:
    """Predicted class per row, `other` where the top probability is below `floor`."""
    return np.where(probabilities.max(axis=1) < floor, other, probabilities.argmax(axis=1))


def _first_best(scores: list[float]) -> int:
    return int(np.argmax(np.round(scores, 6)))  # the first of equal scores: the smallest boost or floor


def train(questions: list[LabelledQuestion], vectors: dict[str, np.ndarray], keywords: DomainKeywords,
          domains: tuple[str, ...]) -> tuple[TopicHead, dict[str, float]]:
    """The head fitted on every question, with boost, temperature and floor from cross-validation."""
    index = {d: i for i, d in enumerate(domains)}
    missing = set(domains) - {q.category for q in questions}
    if missing:
        raise ValueError(f"no training questions for {', '.join(sorted(missing))}")
    texts = [q.text[-TEXT_CHARS:] for q in questions]
    x = np.stack([vectors[t] for t in texts])
    hits = np.stack([keywords.hits(t) for t in texts])
    y = np.array([index[q.category] for q in questions])
    head_logits = cross_validated_logits(x, y, np.array([fold_of(q.text) for q in questions]))
    boost = BOOSTS[_first_best([float(((head_logits + b * hits).argmax(axis=1) == y).mean()) for b in BOOSTS])]
    logits = head_logits + boost * hits
    losses = [float(-np.log(softmax(logits / t)[np.arange(len(y)), y] + 1e-12).mean()) for t in TEMPERATURES]
    temperature = float(TEMPERATURES[int(np.argmin(losses))])
    probabilities = softmax(logits / temperature)
    other = index[OTHER_DOMAIN]
    floor = float(FLOORS[_first_best([float((abstained(probabilities, f, other) == y).mean()) for f in FLOORS])])
    weights, bias = fit(x, y)
    head = TopicHead(domains, weights / temperature, bias / temperature, boost / temperature, floor)
    report = {
        "questions": len(questions),
        "cv_accuracy_head_only": float((head_logits.argmax(axis=1) == y).mean()),
        "cv_accuracy_with_keywords": float((logits.argmax(axis=1) == y).mean()),
        "cv_accuracy": float((abstained(probabilities, floor, other) == y).mean()),
        "keyword_boost": boost,
        "temperature": temperature,
        "min_confidence": floor,
    }
    return head, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS, help=f"MMLU-Pro exemplars (default {DEFAULT_LABELS})")
    parser.add_argument("--written", type=Path, default=WRITTEN_TRAIN, help="questions written for this project (default: the shipped file)")
    parser.add_argument("--vectors", type=Path, default=DEFAULT_VECTORS, help=f"embedding cache (default {DEFAULT_VECTORS})")
    parser.add_argument("--threads", type=int, default=2, help="model threads (default 2)")
    parser.add_argument("--out", type=Path, help="where the head is written (default: the fragment's own head file)")


def run(args: argparse.Namespace) -> int:
    from fleetgate.cache.verify_train import cached_vectors

    path, fragment = load_fragment(BUILTIN_FRAGMENT)
    domains = tuple(sorted(d.name for d in fragment.domains))
    questions = read_labelled(args.labels) + read_labelled(args.written)
    vectors = cached_vectors([q.text[-TEXT_CHARS:] for q in questions], args.vectors, args.threads)
    head, report = train(questions, vectors, DomainKeywords.of(domains, fragment), domains)
    out = args.out or (path.parent / fragment.head).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(head.to_json(), separators=(",", ":")) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0
