"""Topic accuracy of a policy on labelled questions: `fleetgate policy eval-topics`.

Every question is classified as the gateway classifies a request (the policy's keywords and
exemplars, then its topics head). A label that is a topics domain is compared through the
policy's `topics.map`; without topics, the label "other" stands for the default category.
Reported: accuracy with its 95% Wilson interval, per-class precision and recall, the confusion
table and the share sent to `other`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from fleetgate.cache.embed import Embedder
from fleetgate.policies.classify import TopicMatch
from fleetgate.policies.load import LoadedPolicy
from fleetgate.policies.planner import topic_classifier
from fleetgate.policies.topics import domain_name

OTHER_LABEL = "other"
EMBED_BATCH = 32


@dataclass(frozen=True, slots=True)
class LabelledQuestion:
    text: str
    category: str


@dataclass(frozen=True, slots=True)
class TopicEval:
    """Each question with the policy's answer; `other_category` is where the `other` label lands."""

    results: tuple[tuple[LabelledQuestion, TopicMatch], ...]
    other_category: str

    @property
    def correct(self) -> int:
        return sum(q.category == m.category for q, m in self.results)

    @property
    def accuracy(self) -> float:
        return self.correct / max(len(self.results), 1)

    def accuracy_interval(self) -> tuple[float, float]:
        """The 95% Wilson score interval of the accuracy."""
        return wilson_interval(self.correct, len(self.results))

    @property
    def other_share(self) -> float:
        """The share of questions sent to the `other` category (abstentions included)."""
        return sum(m.category == self.other_category for _, m in self.results) / max(len(self.results), 1)

    def confusion(self) -> dict[str, Counter[str]]:
        """expected category -> counts of predicted categories."""
        table: dict[str, Counter[str]] = {}
        for question, match in self.results:
            table.setdefault(question.category, Counter())[match.category] += 1
        return table

    def per_class(self) -> dict[str, dict[str, float]]:
        """category -> precision, recall and support (questions labelled with it)."""
        table = self.confusion()
        predicted = Counter(m.category for _, m in self.results)
        classes = sorted(set(table) | set(predicted))
        return {
            c: {
                "precision": table.get(c, Counter())[c] / predicted[c] if predicted[c] else 0.0,
                "recall": table[c][c] / sum(table[c].values()) if c in table else 0.0,
                "support": sum(table[c].values()) if c in table else 0,
            }
            for c in classes
        }

    def to_json(self) -> dict[str, object]:
        low, high = self.accuracy_interval()
        return {
            "accuracy": self.accuracy,
            "accuracy_ci95": [low, high],
            "correct": self.correct,
            "questions": len(self.results),
            "other_category": self.other_category,
            "other_share": self.other_share,
            "min_recall": min((row["recall"] for row in self.per_class().values() if row["support"]), default=0.0),
            "classes": self.per_class(),
            "confusion": {expected: dict(row) for expected, row in sorted(self.confusion().items())},
            "sources": dict(Counter(m.source for _, m in self.results)),
        }

    def format(self) -> str:
        table = self.confusion()
        classes = self.per_class()
        predicted = sorted(classes)
        low, high = self.accuracy_interval()
        sources = ", ".join(f"{k} {v}" for k, v in sorted(Counter(m.source for _, m in self.results).items()))
        lines = [
            f"topic accuracy: {self.accuracy:.1%} ({self.correct}/{len(self.results)}), 95% CI {low:.1%}-{high:.1%}",
            f"sent to {self.other_category!r} (other): {self.other_share:.1%}; decided by: {sources}",
            "",
            "class".ljust(22) + "precision   recall  support",
        ]
        lines += [f"{c:22s}{row['precision']:9.1%}{row['recall']:9.1%}{row['support']:9d}" for c, row in classes.items()]
        lines += ["", "confusion (rows: expected, columns: predicted, numbered as the rows)"]
        number = {c: str(i + 1) for i, c in enumerate(predicted)}
        lines.append("".ljust(26) + "".join(number[c].rjust(4) for c in predicted))
        for expected in predicted:
            row = table.get(expected, Counter())
            lines.append(f"{number[expected]:>3} {expected:22s}" + "".join(str(row[c]).rjust(4) for c in predicted))
        misses = [(q, m) for q, m in self.results if q.category != m.category]
        if misses:
            lines += ["", "misclassified:"]
            lines += [f"  [{q.category} -> {m.category} ({m.source}, {m.score:.2f})] {q.text[:160]}" for q, m in misses]
        return "\n".join(lines)


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    if total == 0:
        return 0.0, 0.0
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def read_labelled(path: str | Path) -> list[LabelledQuestion]:
    """Labelled questions from any of three formats, labels as policy names ('computer science' -> 'computer-science').

    - a plain JSON list of {"category", "question"};
    - the Semantic Router's cache cases: a list of {"category", "original_question", "similar_questions"};
    - the Semantic Router's MMLU-Pro labels: {"labels": {domain: {"exemplars": [...]}}}.
    """
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict) and isinstance(data.get("labels"), dict):
        return [LabelledQuestion(text, domain_name(label)) for label, entry in data["labels"].items() for text in entry["exemplars"]]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of {{category, question}} or the MMLU-Pro labels file")
    questions = []
    for position, case in enumerate(data):
        if not isinstance(case, dict) or not isinstance(case.get("category"), str):
            raise ValueError(f"{path}: item {position} has no string 'category'")
        texts = [case["question"]] if "question" in case else [case.get("original_question"), *case.get("similar_questions", [])]
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError(f"{path}: item {position} needs a non-empty 'question' (or 'original_question')")
        questions += [LabelledQuestion(text, domain_name(case["category"])) for text in texts]
    return questions


def expected_category(label: str, loaded: LoadedPolicy) -> str:
    """The policy category a label stands for: a topics domain through the policy's map, `other`
    (without topics) as the default category, any other label as itself."""
    policy = loaded.policy
    if loaded.topics is not None and policy.topics is not None and label in loaded.topics.domains:
        return policy.topics.map.get(label, label)
    return policy.topic.default_category if label == OTHER_LABEL else label


def evaluate(loaded: LoadedPolicy, embedder: Embedder | None, questions: list[LabelledQuestion]) -> TopicEval:
    """Every question classified as the gateway would (its topic text: the tail the classifier embeds)."""
    topics = topic_classifier(loaded, embedder)
    chars = loaded.policy.classifier.topic_text_chars
    other = expected_category(OTHER_LABEL, loaded)
    expected = [LabelledQuestion(q.text, expected_category(q.category, loaded)) for q in questions]
    texts = [q.text[-chars:] for q in expected]
    matches = [topics.without_embedding(text) for text in texts]
    pending = [i for i, m in enumerate(matches) if m is None]
    if pending:  # one model call per batch, not per question
        assert embedder is not None
        for start in range(0, len(pending), EMBED_BATCH):
            batch = pending[start : start + EMBED_BATCH]
            for i, vector in zip(batch, embedder.embed([texts[i] for i in batch])):
                matches[i] = topics.nearest(vector, texts[i])
    return TopicEval(tuple((q, m) for q, m in zip(expected, matches) if m is not None), other)
