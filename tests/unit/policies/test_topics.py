"""The topics section: fragment and head, labelled-file formats, the mapping, precedence, checks, training.

No model here (HashingEmbedder or hand-made vectors); tests/integration/policies/test_topics_model.py
judges the shipped head with the real all-MiniLM-L6-v2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fleetgate.cache.embed import HashingEmbedder
from fleetgate.core.plan import plan_summary
from fleetgate.core.request import InferenceRequest
from fleetgate.policies import topics_train
from fleetgate.policies.classify import TopicCategory, TopicClassifier
from fleetgate.policies.load import check_text, load_policy
from fleetgate.policies.planner import CompiledPolicy, PolicyPlanner
from fleetgate.policies.topic_eval import evaluate, read_labelled, wilson_interval
from fleetgate.policies.topics import (
    BUILTIN_FRAGMENT,
    OTHER_DOMAIN,
    DomainKeywords,
    Fragment,
    Topics,
    TopicHead,
    TopicMapping,
    load_fragment,
    load_topics,
)

POLICIES = Path(__file__).resolve().parents[3] / "policies"
MMLU_PRO_DOMAINS = {
    "biology", "business", "chemistry", "computer-science", "economics", "engineering", "health",
    "history", "law", "math", "other", "philosophy", "physics", "psychology",
}


def toy_topics(min_confidence: float = 0.0) -> Topics:
    """Three domains on the first three axes of a 3-d space; 'other' abstains."""
    fragment = Fragment(head="unused.json", domains=[
        {"name": "math", "keywords": ["integral"]}, {"name": "law", "keywords": ["plaintiff"]}, {"name": OTHER_DOMAIN},
    ])
    domains = ("math", "law", OTHER_DOMAIN)
    head = TopicHead(domains, np.eye(3, dtype=np.float32) * 4, np.zeros(3, dtype=np.float32), 2.0, min_confidence)
    return Topics("toy", fragment, head, DomainKeywords.of(domains, fragment))


def test_the_shipped_fragment_has_the_14_domains_and_a_small_head():
    topics = load_topics(BUILTIN_FRAGMENT)
    assert set(topics.domains) == MMLU_PRO_DOMAINS
    head_file = POLICIES / "data" / "topic_head.json"
    assert head_file.stat().st_size < 5 * 1024 * 1024
    assert topics.head.weights.shape == (14, 384)
    probabilities = topics.probabilities("What is the derivative of x^2?", np.full(384, 384 ** -0.5, dtype=np.float32))
    assert probabilities.shape == (14,) and abs(float(probabilities.sum()) - 1) < 1e-5


def test_head_json_round_trip():
    head = toy_topics(0.3).head
    again = TopicHead.from_json(json.loads(json.dumps(head.to_json())))
    assert again.domains == head.domains and again.min_confidence == 0.3 and again.keyword_boost == 2.0
    assert np.allclose(again.weights, head.weights)
    with pytest.raises(ValueError, match="not a topic head"):
        TopicHead.from_json({"format": "something-else"})


def test_mapping_sums_domains_per_category_and_abstains_below_the_floor():
    topics = toy_topics()
    mapped = TopicMapping.of(topics, {"math": "stem", "law": "stem", "other": "general"})
    category, probability, top = mapped.decide("", np.array([0.7, 0.7, 0.0], dtype=np.float32))
    assert category == "stem" and probability > 0.9 and [c for c, _ in top] == ["stem", "general"]

    unsure = TopicMapping.of(topics, {}, min_confidence=0.6)
    category, probability, top = unsure.decide("", np.array([0.5, 0.5, 0.5], dtype=np.float32) / np.sqrt(0.75))
    assert category == OTHER_DOMAIN and probability < 0.6 and len(top) == 2

    # a keyword tips a close call; without an embedding, only keywords speak
    assert unsure.decide("the plaintiff sued", np.array([0.6, 0.5, 0.0], dtype=np.float32))[0] == "law"
    assert unsure.decide("the plaintiff sued", None)[0] == "law"
    assert unsure.decide("no field words", None)[0] == OTHER_DOMAIN


def test_policy_keywords_and_exemplars_override_the_head():
    embedder = HashingEmbedder(dim=3)  # the toy head reads 3-d vectors
    categories = [TopicCategory("code", keywords=("python",)), TopicCategory("faq", exemplars=("how do I reset my password",))]
    head = TopicMapping.of(toy_topics(), {})
    topics = TopicClassifier(categories, embedder, min_similarity=0.9, head=head)
    assert topics.classify("python integral").category == "code"  # the policy's keyword first
    match = topics.classify("how do I reset my password")
    assert (match.category, match.source) == ("faq", "exemplar")
    vector = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    match = TopicClassifier(categories, None, head=head).nearest(vector, "an integral")
    assert (match.category, match.source) == ("math", "classifier") and len(match.candidates) == 2
    with pytest.raises(ValueError, match="3-d embeddings"):
        TopicClassifier(categories, HashingEmbedder(dim=384), head=head)


def test_labelled_files_in_three_formats(tmp_path: Path):
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps([{"category": "computer science", "question": "What is a B-tree?"}]))
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps([{"category": "health", "original_question": "a?", "similar_questions": ["b?"]}]))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"labels": {"computer science": {"exemplars": ["c?"]}}}))
    assert [(q.category, q.text) for q in read_labelled(plain)] == [("computer-science", "What is a B-tree?")]
    assert [q.text for q in read_labelled(cases)] == ["a?", "b?"]
    assert read_labelled(labels)[0].category == "computer-science"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question": "no label"}]))
    with pytest.raises(ValueError, match="item 0"):
        read_labelled(bad)


def test_wilson_interval():
    low, high = wilson_interval(249, 280)
    assert 0.84 < low < 0.85 and 0.92 < high < 0.93
    assert wilson_interval(0, 0) == (0.0, 0.0)


TOPICS_POLICY = """\
version: 1
topics:
  fragment: mmlu-pro
  map: {biology: life, health: life, other: general}
categories:
  - name: general
rules:
  - name: life
    match: {category: life}
    cache: "off"
"""


def errors_of(text: str) -> list[tuple[str, str]]:
    loaded, findings = check_text(text, base_dir=POLICIES)
    return [(f.path, f.message) for f in findings if f.severity == "error"]


@pytest.mark.parametrize("text, path, message", [
    (TOPICS_POLICY.replace("biology: life", "biolgy: life"), "topics.map.biolgy", "unknown domain 'biolgy'"),
    (TOPICS_POLICY.replace("category: life}", "category: [life, lawz]}"), "rules[0].match.category[1]", "unknown category or domain 'lawz'"),
    (TOPICS_POLICY.replace("category: life}", "category: biology}"), "rules[0].match.category[0]", "mapped onto category 'life'"),
    (TOPICS_POLICY.replace("fragment: mmlu-pro", "fragment: missing.yaml"), "topics.fragment", "cannot load topics fragment"),
    (TOPICS_POLICY.replace("  map:", "  min_confidence: 2\n  map:"), "topics.min_confidence", "less than or equal to 1"),
])
def test_check_names_the_yaml_path_of_topics_errors(text, path, message):
    found = errors_of(text)
    assert any(p == path and message in m for p, m in found), found


def test_topic_categories_are_known_to_rules_and_need_no_keywords():
    loaded, findings = check_text(TOPICS_POLICY.replace("category: life}", "category: [life, law, computer-science]}"))
    assert loaded is not None and loaded.topics is not None, findings
    assert findings == []


@pytest.mark.parametrize("name", ["examples/topics.yaml", "examples/topics_mapped.yaml"])
def test_shipped_topic_examples_check_clean(name):
    loaded, findings = check_text((POLICIES / name).read_text(), name, base_dir=(POLICIES / name).parent)
    assert loaded is not None and findings == [], findings


def chat(text: str) -> InferenceRequest:
    return InferenceRequest(request_id="r", api="chat", model="llama-3.1-8b", body={}, stream=False, messages=({"role": "user", "content": text},))


async def test_the_plan_header_and_explain_show_the_top_two_categories():
    loaded = load_policy(POLICIES / "examples" / "topics_mapped.yaml")
    planner = PolicyPlanner(CompiledPolicy.build(loaded, HashingEmbedder()))
    request = chat("Evaluate the integral of x e^x dx.")
    plan = await planner.plan(request)
    top = plan.profile.category_candidates
    assert len(top) == 2 and top[0][1] >= top[1][1] and plan.profile.category_source == "classifier"
    assert f"topics={top[0][0]}:{top[0][1]:.2f},{top[1][0]}:{top[1][1]:.2f};" in plan_summary(plan)
    explained = await planner.explain(request)
    assert [entry["category"] for entry in explained["top_categories"]] == [c for c, _ in top]


def test_training_reproduces_a_working_head_on_a_small_sample():
    """Deterministic, and it learns: on the first 12 written questions of each domain (hashing vectors),
    the cross-validated accuracy is far above chance (1/14) and the fit recalls its own sample."""
    path, fragment = load_fragment(BUILTIN_FRAGMENT)
    domains = tuple(sorted(d.name for d in fragment.domains))
    written = read_labelled(topics_train.WRITTEN_TRAIN)
    sample = [q for d in domains for q in [w for w in written if w.category == d][:12]]
    texts = [q.text[-topics_train.TEXT_CHARS:] for q in sample]
    vectors = dict(zip(texts, HashingEmbedder().embed(texts)))
    keywords = DomainKeywords.of(domains, fragment)
    head, report = topics_train.train(sample, vectors, keywords, domains)
    again, _ = topics_train.train(sample, vectors, keywords, domains)
    assert np.array_equal(head.weights, again.weights) and head.min_confidence == again.min_confidence
    assert report["cv_accuracy"] > 0.3, report
    topics = Topics("sample", fragment, head, keywords)
    fitted = np.mean([domains[int(np.argmax(topics.probabilities(t, vectors[t])))] == q.category for q, t in zip(sample, texts)])
    assert fitted > 0.9


def test_the_held_out_set_is_never_training_data():
    train = {q.text for q in read_labelled(topics_train.WRITTEN_TRAIN)}
    held = read_labelled(topics_train.HELDOUT)
    assert len(held) == 280 and not train & {q.text for q in held}
    assert {q.category for q in held} == MMLU_PRO_DOMAINS


def test_eval_topics_scores_keywords_alone_without_a_model():
    loaded = load_policy(POLICIES / "examples" / "topics.yaml")
    questions = read_labelled(topics_train.HELDOUT)
    result = evaluate(loaded, None, questions)
    report = result.to_json()
    assert 0.2 < report["accuracy"] < 0.7  # keywords alone: the baseline the head must beat
    assert report["other_share"] > 0.3 and set(report["classes"]) == MMLU_PRO_DOMAINS


def test_bench_classify_times_the_head_beyond_the_embedding():
    from fleetgate.policies.bench import run_classify_bench

    report = run_classify_bench(POLICIES / "default.yaml", requests=50, runs=1, embeddings=0)
    line = next(line for line in report.splitlines() if "topic head" in line)
    assert "p99" in line and "cpu" in line
