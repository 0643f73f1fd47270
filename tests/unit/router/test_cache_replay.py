"""Cache hits replayed in OpenAI's format: the official client's types accept them, text survives."""

from __future__ import annotations

import orjson
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from fleetgate.core.plan import CacheHit
from fleetgate.core.request import InferenceRequest
from fleetgate.router.cache_replay import replay_body, replay_sse
from fleetgate.router.completion_text import completion_from_body, completion_from_sse

TEXT = "Paris is the capital of France. " * 5
HIT = CacheHit(TEXT, "stop", 0.93)


def chat(stream: bool, **body: object) -> InferenceRequest:
    messages = ({"role": "user", "content": "capital of France?"},)
    return InferenceRequest("r1", "chat", "m", {"messages": list(messages), **body}, stream, messages=messages)


def completion(stream: bool) -> InferenceRequest:
    return InferenceRequest("r2", "completions", "m", {"prompt": "The capital of France is"}, stream, prompt="The capital of France is")


async def sse(request: InferenceRequest) -> bytes:
    return b"".join([chunk async for chunk in replay_sse(request, HIT)])


def test_chat_body_is_a_chat_completion_with_usage() -> None:
    body = replay_body(chat(False), HIT)
    parsed = ChatCompletion.model_validate(body)
    assert parsed.choices[0].message.content == TEXT and parsed.choices[0].finish_reason == "stop"
    assert parsed.usage is not None and parsed.usage.completion_tokens > 0
    assert completion_from_body("chat", orjson.dumps(body)) == (TEXT, "stop")


def test_completion_body_is_a_text_completion() -> None:
    body = replay_body(completion(False), HIT)
    assert Completion.model_validate(body).choices[0].text == TEXT
    assert completion_from_body("completions", orjson.dumps(body)) == (TEXT, "stop")


@pytest.mark.parametrize("include_usage", [False, True])
async def test_chat_stream_is_valid_chunks_ending_in_done(include_usage: bool) -> None:
    request = chat(True, stream_options={"include_usage": include_usage})
    raw = await sse(request)
    assert raw.endswith(b"data: [DONE]\n\n")
    events = [orjson.loads(line[6:]) for line in raw.split(b"\n\n") if line.startswith(b"data: {")]
    chunks = [ChatCompletionChunk.model_validate(e) for e in events]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert (chunks[-1].usage is not None) == include_usage
    assert completion_from_sse("chat", raw) == (TEXT, "stop")


async def test_completion_stream_round_trips() -> None:
    raw = await sse(completion(True))
    assert completion_from_sse("completions", raw) == (TEXT, "stop")
