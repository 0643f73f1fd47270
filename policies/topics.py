"""The MMLU-Pro topic head: a softmax layer over the request's one MiniLM embedding -> 14 domains.

A policy's `topics:` section names a fragment (policies/fragments/mmlu-pro.yaml: the domains, their
keywords, the head's weights) and maps domains onto its own categories. The head is trained by
policies/topics_train.py (`fleetgate policy train-topics`) and shipped as policies/data/topic_head.json,
so nothing retrains at start-up. Scoring a request is a (14 x 384) matrix-vector product, a keyword
scan and a softmax: microseconds next to the embedding it reuses. Below the head's calibrated
`min_confidence` it abstains to the `other` domain.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Mapping, Sequence

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

HEAD_FORMAT = "fleetgate-topic-head/2"
FRAGMENTS = Path(__file__).parent / "fragments"
BUILTIN_FRAGMENT = "mmlu-pro"
OTHER_DOMAIN = "other"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"


def domain_name(label: str) -> str:
    """A label as a policy name: 'computer science' -> 'computer-science' (names have no spaces)."""
    return label.strip().lower().replace(" ", "-")


def keyword_pattern(keywords: Sequence[str]) -> re.Pattern[str] | None:
    """One regex for whole-word, any-case matches of `keywords`; None when there are none."""
    if not keywords:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(k) for k in keywords) + r")(?!\w)", re.IGNORECASE)


class Domain(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    description: str | None = None
    keywords: list[Annotated[str, Field(pattern=r"\w")]] = []  # matched as a word sequence, punctuation ignored


class Fragment(BaseModel):
    """A topics fragment file: the domains and the head trained on them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    head: str  # path of the head's JSON, relative to the fragment
    domains: list[Domain] = Field(min_length=2)


@dataclass(frozen=True, slots=True)
class TopicHead:
    """Linear softmax classifier over unit embeddings plus a keyword boost; weights include the calibration temperature."""

    domains: tuple[str, ...]
    weights: np.ndarray  # (len(domains), dim) float32
    bias: np.ndarray  # (len(domains),) float32
    keyword_boost: float  # added to a domain's logit when one of its keywords is in the text
    min_confidence: float  # the top probability below which the head abstains to `other`

    def __post_init__(self) -> None:
        if OTHER_DOMAIN not in self.domains:
            raise ValueError(f"a topic head needs an {OTHER_DOMAIN!r} domain to abstain to")
        if self.weights.ndim != 2 or self.weights.shape[0] != len(self.domains) or self.bias.shape != (len(self.domains),):
            raise ValueError("topic head weights do not match its domains")

    def probabilities(self, vectors: np.ndarray, keyword_hits: np.ndarray) -> np.ndarray:
        """(n, domains) probabilities of (n, dim) unit embeddings and (n, domains) 0/1 keyword hits."""
        logits = np.atleast_2d(np.asarray(vectors, dtype=np.float32)) @ self.weights.T + self.bias + self.keyword_boost * keyword_hits
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def to_json(self) -> dict[str, object]:
        return {
            "format": HEAD_FORMAT,
            "domains": list(self.domains),
            "keyword_boost": round(self.keyword_boost, 5),
            "min_confidence": self.min_confidence,
            "bias": [round(float(b), 5) for b in self.bias],
            "weights": [[round(float(w), 5) for w in row] for row in self.weights],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> "TopicHead":
        if data.get("format") != HEAD_FORMAT:
            raise ValueError(f"not a topic head (format {data.get('format')!r}, expected {HEAD_FORMAT!r})")
        return cls(
            domains=tuple(str(d) for d in data["domains"]),  # type: ignore[union-attr]
            weights=np.asarray(data["weights"], dtype=np.float32),
            bias=np.asarray(data["bias"], dtype=np.float32),
            keyword_boost=float(data["keyword_boost"]),  # type: ignore[arg-type]
            min_confidence=float(data["min_confidence"]),  # type: ignore[arg-type]
        )


_WORD = re.compile(r"\w+")


@dataclass(frozen=True, slots=True)
class DomainKeywords:
    """Each domain's keywords as word sequences, indexed by their first word: a text is split into
    lowercase words once and each word looked up, a few microseconds where 14 regex scans of the
    same text cost hundreds."""

    n_domains: int
    by_first_word: Mapping[str, tuple[tuple[tuple[str, ...], int], ...]]  # first word -> (words, domain index)

    @classmethod
    def of(cls, domains: Sequence[str], fragment: Fragment) -> "DomainKeywords":
        by_name = {d.name: d.keywords for d in fragment.domains}
        index: dict[str, tuple[tuple[tuple[str, ...], int], ...]] = {}
        for position, name in enumerate(domains):
            for keyword in by_name.get(name, []):
                words = tuple(_WORD.findall(keyword.lower()))
                index[words[0]] = (*index.get(words[0], ()), (words, position))
        return cls(len(domains), index)

    def hits(self, text: str) -> np.ndarray:
        """1.0 for each domain with a keyword in `text` (whole words, any case), else 0.0."""
        found = np.zeros(self.n_domains, dtype=np.float32)
        words = _WORD.findall(text.lower())
        for start, word in enumerate(words):
            for phrase, domain in self.by_first_word.get(word, ()):
                if len(phrase) == 1 or tuple(words[start : start + len(phrase)]) == phrase:
                    found[domain] = 1.0
        return found


@dataclass(frozen=True, slots=True)
class Topics:
    """A loaded fragment: its domains, their keywords and the head."""

    source: str
    fragment: Fragment
    head: TopicHead
    keywords: DomainKeywords

    @property
    def domains(self) -> tuple[str, ...]:
        return self.head.domains

    def probabilities(self, text: str, vector: np.ndarray | None) -> np.ndarray:
        """The head's probability per domain for one request (its topic text and its embedding).

        Without an embedding only keywords speak: the domains whose keywords hit share the
        probability (by the head's bias), and a text without any goes to `other`.
        """
        hits = self.keywords.hits(text)
        if vector is not None:
            return self.head.probabilities(vector, hits[None, :])[0]
        if not hits.any():
            return np.asarray([d == OTHER_DOMAIN for d in self.domains], dtype=np.float32)
        logits = np.where(hits > 0, self.head.bias, -np.inf)
        exp = np.exp(logits - logits.max())
        return exp / exp.sum()


def fragment_path(reference: str, base_dir: Path) -> Path:
    """A built-in fragment's name (`mmlu-pro`), or a YAML path relative to the policy's folder."""
    builtin = FRAGMENTS / f"{reference}.yaml"
    return builtin if re.fullmatch(NAME_PATTERN, reference) and builtin.is_file() else base_dir / reference


def load_fragment(reference: str = BUILTIN_FRAGMENT, base_dir: Path = Path(".")) -> tuple[Path, Fragment]:
    path = fragment_path(reference, base_dir)
    return path, Fragment.model_validate(yaml.safe_load(path.read_text()))


def load_topics(reference: str = BUILTIN_FRAGMENT, base_dir: Path = Path(".")) -> Topics:
    """The fragment and its head; ValueError/OSError with what is wrong (the caller adds the YAML path)."""
    path, fragment = load_fragment(reference, base_dir)
    head = TopicHead.from_json(json.loads((path.parent / fragment.head).read_text()))
    named = {d.name for d in fragment.domains}
    if set(head.domains) != named:
        raise ValueError(f"the head's domains ({', '.join(head.domains)}) differ from the fragment's ({', '.join(sorted(named))})")
    return Topics(str(path), fragment, head, DomainKeywords.of(head.domains, fragment))


@dataclass(frozen=True, slots=True)
class TopicMapping:
    """A policy's view of the head: domain probabilities summed per category, abstention to `other`'s category."""

    topics: Topics
    categories: tuple[str, ...]  # the category of each domain, in the head's order
    min_confidence: float

    @classmethod
    def of(cls, topics: Topics, mapping: Mapping[str, str], min_confidence: float | None = None) -> "TopicMapping":
        floor = topics.head.min_confidence if min_confidence is None else min_confidence
        return cls(topics, tuple(mapping.get(d, d) for d in topics.domains), floor)

    @property
    def dim(self) -> int:
        return int(self.topics.head.weights.shape[1])

    @property
    def other_category(self) -> str:
        return self.categories[self.topics.domains.index(OTHER_DOMAIN)]

    def ranked(self, text: str, vector: np.ndarray | None) -> list[tuple[str, float]]:
        """(category, probability) best first; without a vector only the keywords speak."""
        totals: dict[str, float] = {}
        for category, p in zip(self.categories, self.topics.probabilities(text, vector)):
            totals[category] = totals.get(category, 0.0) + float(p)
        return sorted(totals.items(), key=lambda item: -item[1])

    def decide(self, text: str, vector: np.ndarray | None) -> tuple[str, float, tuple[tuple[str, float], ...]]:
        """The category (`other`'s below the floor), its probability, and the top two with theirs."""
        ranked = self.ranked(text, vector)
        top = tuple((c, round(p, 4)) for c, p in ranked[:2])
        category, probability = ranked[0]
        return (category if probability >= self.min_confidence else self.other_category), probability, top
