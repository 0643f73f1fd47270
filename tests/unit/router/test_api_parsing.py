"""Ingress and usage for the APIs beyond chat and completions: what each requires, and the usage read
from each one's answers (whole, or from its stream's events)."""

from __future__ import annotations

import orjson
import pytest

from fleetgate.core.errors import InvalidRequestError
from fleetgate.core.usage import Usage
from fleetgate.router.ingress import parse_inference_request
from fleetgate.router.usage_stream import UsageRelay, ask_for_usage, usage_from_body


def parse(api: str, body: dict) -> object:
    return parse_inference_request(orjson.dumps(body), api, request_id="r", arrival_s=0.0, headers={})  # type: ignore[arg-type]


@pytest.mark.parametrize(("api", "body", "param"), [
    ("messages", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
    ("messages", {"model": "m", "max_tokens": 4, "system": 3, "messages": [{"role": "user", "content": "hi"}]}, "system"),
    ("messages", {"model": "m", "max_tokens": 4, "tools": [{}], "messages": [{"role": "user", "content": "hi"}]}, "tools"),
    ("responses", {"model": "m"}, "input"),
    ("responses", {"model": "m", "input": "hi", "previous_response_id": 7}, "previous_response_id"),
    ("embeddings", {"model": "m", "input": "hi", "stream": True}, "stream"),
    ("embeddings", {"model": "m", "input": {"text": "hi"}}, "input"),
    ("tokenize", {"model": "m"}, "prompt"),
    ("detokenize", {"model": "m"}, "tokens"),
])
def test_each_api_says_what_is_missing(api: str, body: dict, param: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        parse(api, body)
    assert refused.value.param == param


def test_what_each_api_counts_and_routes_on() -> None:
    embedding = parse("embeddings", {"model": "m", "input": ["abcd", "efgh"]})
    assert embedding.prompt_tokens == 3  # "abcd\\nefgh": 9 characters
    assert parse("tokenize", {"model": "m", "prompt": "a long prompt"}).prompt_tokens == 0  # generates nothing
    response = parse("responses", {"model": "m", "instructions": "Be brief.", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}]})
    chat = parse("chat", {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                                     {"role": "user", "content": "Hi"}]})
    assert response.routing_text == chat.routing_text
    streamed = parse("messages", {"model": "m", "max_tokens": 4, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert ask_for_usage(streamed, b"{}") == (b"{}", False)  # its events always carry usage


def test_usage_of_whole_answers() -> None:
    assert usage_from_body(b'{"usage": {"prompt_tokens": 9, "total_tokens": 9}}', "embeddings") == Usage(9, 0, 0)
    responses = {"usage": {"input_tokens": 20, "input_tokens_details": {"cached_tokens": 16}, "output_tokens": 5}}
    assert usage_from_body(orjson.dumps(responses), "responses") == Usage(20, 5, 16)
    message = {"usage": {"input_tokens": 4, "output_tokens": 5, "cache_read_input_tokens": 16, "cache_creation_input_tokens": 0}}
    assert usage_from_body(orjson.dumps(message), "messages") == Usage(20, 5, 16)


def test_usage_of_streams_is_read_from_their_last_events() -> None:
    completed = {"type": "response.completed", "sequence_number": 9, "response": {
        "usage": {"input_tokens": 20, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5}}}
    created = {"type": "response.created", "sequence_number": 0, "response": {"usage": None}}
    stream = b"".join(f"event: {e['type']}\ndata: ".encode() + orjson.dumps(e) + b"\n\n" for e in (created, completed))
    relay = UsageRelay(strip=False, api="responses")
    assert relay.feed(stream[:50]) + relay.feed(stream[50:]) + relay.flush() == stream
    assert relay.usage == Usage(20, 5, 0)

    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
             "usage": {"input_tokens": 4, "output_tokens": 5, "cache_read_input_tokens": 16}}
    relay = UsageRelay(strip=False, api="messages")
    relay.feed(b"event: message_delta\ndata: " + orjson.dumps(delta) + b"\n\n")
    assert relay.usage == Usage(20, 5, 16)
