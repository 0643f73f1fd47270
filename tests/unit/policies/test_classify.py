"""Every workload signal of policies/classify.py, table-driven, plus the topic classifier."""

from __future__ import annotations

import pytest

from fleetgate.cache.embed import HashingEmbedder
from fleetgate.core.prefix import render_chat
from fleetgate.core.request import InferenceRequest
from fleetgate.core.tokens import count_tokens
from fleetgate.policies.classify import (
    ClassifierConfig,
    TopicCategory,
    TopicClassifier,
    WorkloadClassifier,
)


def chat(*messages: dict, tools=None, max_tokens=None, session_id=None, user=None, model="m") -> InferenceRequest:
    return InferenceRequest(
        request_id="r", api="chat", model=model, body={}, stream=False, messages=tuple(messages),
        tools=tuple(tools) if tools else None, max_tokens=max_tokens, session_id=session_id, user=user,
    )


def completion(prompt: str, max_tokens=None) -> InferenceRequest:
    return InferenceRequest(request_id="r", api="completions", model="m", body={}, stream=False, prompt=prompt, max_tokens=max_tokens)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
TOOL_CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
CLASSIFY = WorkloadClassifier().classify


@pytest.mark.parametrize(
    ("request_", "api"),
    [(chat(user("hi")), "chat"), (completion("once upon"), "completions")],
)
def test_api_kind(request_, api):
    assert CLASSIFY(request_).api == api


def test_prompt_tokens_count_the_canonical_chat_rendering_with_tools():
    messages = (user("x" * 400), assistant("y" * 40))
    profile = CLASSIFY(chat(*messages, tools=[TOOL]))
    assert profile.prompt_tokens == count_tokens(render_chat(messages, [TOOL]))
    assert profile.prompt_tokens > 110  # 440 chars of content plus role markers and the tool schema


def test_prompt_tokens_of_a_completion_are_its_text():
    assert CLASSIFY(completion("a" * 4001)).prompt_tokens == 1001


@pytest.mark.parametrize(
    ("request_", "output_tokens", "requested"),
    [
        (chat(user("hi"), max_tokens=42), 42, True),
        (chat(user("hi")), 256, False),  # chat default
        (completion("hi"), 128, False),  # completions default
        (chat(user("hi"), tools=[TOOL]), 160, False),  # agentic default
        (chat(user("hi"), max_tokens=0), 256, False),  # 0 means "not given"
    ],
)
def test_output_tokens_requested_else_expected_default(request_, output_tokens, requested):
    profile = CLASSIFY(request_)
    assert (profile.output_tokens, profile.output_tokens_requested) == (output_tokens, requested)


@pytest.mark.parametrize(
    ("prompt_chars", "max_tokens", "shape"),
    [
        (4000, 100, "prefill-heavy"),  # 1000 / 100 = 10 >= 4
        (1600, 100, "prefill-heavy"),  # exactly 4
        (1596, 100, "balanced"),  # 3.99
        (400, 100, "decode-heavy"),  # exactly 1
        (40, 1000, "decode-heavy"),
    ],
)
def test_shape_from_the_prompt_to_output_ratio(prompt_chars, max_tokens, shape):
    assert CLASSIFY(completion("a" * prompt_chars, max_tokens=max_tokens)).shape == shape


def test_shape_ratios_are_configurable():
    strict = WorkloadClassifier(ClassifierConfig(prefill_heavy_min_ratio=20.0, decode_heavy_max_ratio=0.1))
    assert strict.classify(completion("a" * 4000, max_tokens=100)).shape == "balanced"


@pytest.mark.parametrize(
    ("messages", "turns"),
    [
        ((user("a"),), 1),
        (({"role": "system", "content": "s"}, user("a"), assistant("b"), user("c")), 2),
        ((user("a"), assistant("b"), user("c"), assistant("d"), user("e")), 3),
    ],
)
def test_turns_count_user_messages(messages, turns):
    profile = CLASSIFY(chat(*messages))
    assert (profile.turns, profile.multi_turn) == (turns, turns > 1)


def test_a_completion_is_one_turn():
    assert CLASSIFY(completion("x")).turns == 1


@pytest.mark.parametrize(
    ("request_", "agentic"),
    [
        (chat(user("hi")), False),
        (chat(user("hi"), tools=[TOOL]), True),  # tools declared
        (chat(user("hi"), {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}), True),
        (chat(user("hi"), {"role": "tool", "tool_call_id": "c1", "content": "sunny"}), True),
        (chat(user("hi"), {"role": "function", "name": "f", "content": "x"}), True),  # legacy function result
        (chat(user("hi"), {"role": "assistant", "content": "ok", "tool_calls": []}), False),
        (completion("hi"), False),
    ],
)
def test_agentic_from_tools_tool_calls_or_tool_results(request_, agentic):
    assert CLASSIFY(request_).agentic is agentic


@pytest.mark.parametrize(
    ("session_id", "user_field", "expected"),
    [("s1", None, "s1"), (None, "alice", "alice"), ("s1", "alice", "s1"), (None, None, None)],
)
def test_session_id_from_header_else_user(session_id, user_field, expected):
    profile = CLASSIFY(chat(user("hi"), session_id=session_id, user=user_field))
    assert (profile.session_id, profile.has_session) == (expected, expected is not None)


@pytest.mark.parametrize(
    ("prompt_tokens", "context_class"),
    [(1, "short"), (2048, "short"), (2049, "medium"), (8192, "medium"), (8193, "long"), (32768, "long"), (32769, "very-long")],
)
def test_context_class_thresholds(prompt_tokens, context_class):
    assert CLASSIFY(completion("a" * 4 * prompt_tokens)).context_class == context_class


def test_context_thresholds_are_configurable_and_must_increase():
    small = WorkloadClassifier(ClassifierConfig(short_max_tokens=10, medium_max_tokens=20, long_max_tokens=30))
    assert small.classify(completion("a" * 4 * 25)).context_class == "long"
    with pytest.raises(ValueError, match="increase"):
        ClassifierConfig(short_max_tokens=100, medium_max_tokens=50)
    with pytest.raises(ValueError, match="ratio"):
        ClassifierConfig(prefill_heavy_min_ratio=1.0, decode_heavy_max_ratio=1.0)


def test_model_and_tenant_are_copied():
    profile = CLASSIFY(chat(user("hi"), model="llama"))
    assert (profile.model, profile.tenant) == ("llama", "default")


class CountingEmbedder(HashingEmbedder):
    """Counts model calls so tests can see when an embedding is (not) paid for."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.texts_embedded = 0

    def embed(self, texts):
        self.calls += 1
        self.texts_embedded += len(texts)
        return super().embed(texts)


CATEGORIES = (
    TopicCategory("code", keywords=("python", "stack trace", "c++"), exemplars=("fix this function bug compile error",)),
    TopicCategory("health", keywords=("exercise",), exemplars=("benefits of sleep and diet for the body",)),
    TopicCategory("psychology", exemplars=("why do people feel anxious and how does the mind cope",)),
)


@pytest.mark.parametrize(
    ("text", "category", "source"),
    [
        ("How do I sort a list in Python?", "code", "keyword"),
        ("PYTHON please", "code", "keyword"),  # any case
        ("here is my stack trace:", "code", "keyword"),  # multi-word keyword
        ("is C++ fast?", "code", "keyword"),  # punctuation in a keyword
        ("pythonic idioms", "general", "default"),  # whole words only, and nothing similar
        ("is exercise good for python programmers", "code", "keyword"),  # category order decides
        ("why do people feel anxious", "psychology", "exemplar"),
        ("what are the benefits of sleep", "health", "exemplar"),
        ("zebra quantum teapot", "general", "default"),  # below min_similarity
        ("", "general", "default"),
    ],
)
def test_topic_keywords_first_then_nearest_exemplar(text, category, source):
    topics = TopicClassifier(CATEGORIES, CountingEmbedder())
    profile = WorkloadClassifier(topics=topics).classify(chat(user(text)))
    assert (profile.category, profile.category_source) == (category, source)
    if source == "keyword":
        assert profile.category_score == 1.0
    elif source == "exemplar":
        assert profile.category_score >= topics.min_similarity
    else:
        assert profile.category_score < topics.min_similarity


def test_exemplars_are_embedded_once_at_load_and_keyword_hits_cost_no_embedding():
    embedder = CountingEmbedder()
    classifier = WorkloadClassifier(topics=TopicClassifier(CATEGORIES, embedder))
    assert (embedder.calls, embedder.texts_embedded) == (1, 3)
    classifier.classify(chat(user("python")))
    assert embedder.calls == 1
    classifier.classify(chat(user("why do people feel anxious")))
    assert embedder.calls == 2


def test_topic_uses_the_last_user_message_text_parts():
    classifier = WorkloadClassifier(topics=TopicClassifier(CATEGORIES))
    profile = classifier.classify(
        chat(user("python"), assistant("sure"), {"role": "user", "content": [{"type": "text", "text": "more exercise?"}]})
    )
    assert profile.category == "health"


def test_topic_without_embedder_uses_keywords_only():
    topics = TopicClassifier(CATEGORIES)
    assert not topics.uses_embeddings
    assert WorkloadClassifier(topics=topics).classify(chat(user("why do people feel anxious"))).category == "general"


def test_topic_of_a_completion_is_the_prompt_tail():
    classifier = WorkloadClassifier(ClassifierConfig(topic_text_chars=20), TopicClassifier(CATEGORIES))
    assert classifier.classify(completion("python " + "x " * 100 + "exercise")).category == "health"
