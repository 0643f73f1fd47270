"""Topic accuracy of a policy's categories on labelled questions (vLLM Semantic Router's cache cases).

The cases file lists, per case, a category, an original question and its paraphrases; every
question is classified with the policy's keywords and exemplars. The label "other" stands for the
policy's default category (the questions that belong to no special topic).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from fleetgate.cache.embed import Embedder
from fleetgate.policies.classify import TopicCategory, TopicClassifier, TopicMatch
from fleetgate.policies.schema import Policy

OTHER_LABEL = "other"


@dataclass(frozen=True, slots=True)
class LabelledQuestion:
    text: str
    category: str


@dataclass(frozen=True, slots=True)
class TopicEval:
    results: tuple[tuple[LabelledQuestion, TopicMatch], ...]

    @property
    def accuracy(self) -> float:
        return sum(q.category == m.category for q, m in self.results) / max(len(self.results), 1)

    def confusion(self) -> dict[str, Counter[str]]:
        """expected category -> counts of predicted categories."""
        table: dict[str, Counter[str]] = {}
        for question, match in self.results:
            table.setdefault(question.category, Counter())[match.category] += 1
        return table

    def format(self) -> str:
        table = self.confusion()
        predicted = sorted({m.category for _, m in self.results} | set(table))
        width = max(len(c) for c in predicted) + 2
        lines = [f"topic accuracy: {self.accuracy:.1%} ({sum(q.category == m.category for q, m in self.results)}/{len(self.results)})", ""]
        lines.append("expected \\ predicted".ljust(22) + "".join(c.rjust(width) for c in predicted) + "   recall")
        for expected in sorted(table):
            row = table[expected]
            recall = row[expected] / max(sum(row.values()), 1)
            lines.append(expected.ljust(22) + "".join(str(row[c]).rjust(width) for c in predicted) + f"   {recall:6.1%}")
        misses = [(q, m) for q, m in self.results if q.category != m.category]
        if misses:
            lines += ["", "misclassified:"]
            lines += [f"  [{q.category} -> {m.category} ({m.source}, {m.score:.2f})] {q.text}" for q, m in misses]
        return "\n".join(lines)


def read_cases(path: str | Path, default_category: str) -> list[LabelledQuestion]:
    """Every original and similar question of the cases file, "other" mapped to the default."""
    questions = []
    for case in json.loads(Path(path).read_text()):
        label = default_category if case["category"] == OTHER_LABEL else case["category"]
        for text in [case["original_question"], *case.get("similar_questions", [])]:
            questions.append(LabelledQuestion(text, label))
    return questions


def evaluate(policy: Policy, embedder: Embedder | None, questions: list[LabelledQuestion]) -> TopicEval:
    topics = TopicClassifier(
        [TopicCategory(c.name, tuple(c.keywords), tuple(c.exemplars)) for c in policy.categories],
        embedder,
        min_similarity=policy.topic.min_similarity,
        default_category=policy.topic.default_category,
    )
    return TopicEval(tuple((q, topics.classify(q.text)) for q in questions))
