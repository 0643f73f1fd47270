"""A request derives its canonical text, token count and routing prefix hashes once, when built."""

import pytest

from fleetgate.core.prefix import (
    ROUTING_BLOCK_CHARS,
    prefix_hashes,
    render_chat,
    render_chat_marked,
)
from fleetgate.core.request import InferenceRequest
from fleetgate.core.tokens import count_tokens

TOOLS = ({"type": "function", "function": {"name": "search"}},)
CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "be brief " * 60}, {"role": "user", "content": "first"},
     {"role": "assistant", "content": "ok"}, {"role": "user", "content": [{"type": "text", "text": "second"}]}],
    [{"role": "user", "content": "fix it"}, {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
     {"role": "tool", "content": "log " * 100}],
]


def chat(messages: list[dict], tools: tuple | None = None) -> InferenceRequest:
    return InferenceRequest("r", "chat", "m", {}, False, messages=tuple(messages), tools=tools)


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("tools", [None, TOOLS])
def test_chat_fields_are_the_canonical_rendering_and_what_routers_key_on(messages: list[dict], tools) -> None:
    request = chat(messages, tools)
    text = render_chat(messages, tools)
    assert request.routing_text == text
    assert request.prompt_tokens == count_tokens(text)
    assert request.prefix_hashes == prefix_hashes(text, ROUTING_BLOCK_CHARS)
    assert len(request.prefix_hashes) == -(-len(text) // ROUTING_BLOCK_CHARS)


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("tools", [None, TOOLS])
def test_last_user_span_splits_the_rendering_into_that_message_and_the_rest(messages: list[dict], tools) -> None:
    text, (start, end) = render_chat_marked(messages, tools)
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    assert text[start:end] == render_chat([messages[last]])
    assert text[:start] + text[end:] == render_chat(messages[:last] + messages[last + 1 :], tools)


def test_a_chat_without_user_message_has_no_span() -> None:
    assert chat([{"role": "system", "content": "s"}]).last_user_span is None


def test_completions_route_on_the_prompt_itself() -> None:
    request = InferenceRequest("r", "completions", "m", {}, False, prompt="x" * 600)
    assert (request.routing_text, request.last_user_span, request.prompt_tokens) == ("x" * 600, None, 150)
    assert len(request.prefix_hashes) == 3
    empty = InferenceRequest("r", "completions", "m", {}, False)
    assert (empty.routing_text, empty.prompt_tokens, empty.prefix_hashes) == ("", 0, ())
