"""Usage the client did not ask for: asked for upstream, stripped on the way back, byte for byte.

The streams below follow vLLM 0.32's serving code (chat_completion/serving.py, completion/serving.py):
with include_usage on, the finish event loses `system_fingerprint` and a last usage-only event
(`"choices":[]`, usage, then the fingerprint) comes before `[DONE]`.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from fleetgate.core.request import InferenceRequest
from fleetgate.core.usage import Usage
from fleetgate.router.usage_stream import UsageRelay, ask_for_usage, usage_from_body

USAGE = Usage(prompt_tokens=21, completion_tokens=3, cached_tokens=16)
FINGERPRINT = "vllm-0.32.0-1a2b3c4d"
TRICKY = 'a "usage": {} and "finish_reason":"stop" inside the text, data: [DONE]\n\n'


def event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def vllm_stream(api: str, texts: list[str], *, include_usage: bool, fingerprint: str | None) -> bytes:
    """A stream as vLLM writes it: chat opens with a role delta; the last text event finishes."""
    head: dict[str, Any] = {"id": "chatcmpl-x" if api == "chat" else "cmpl-x",
                            "object": "chat.completion.chunk" if api == "chat" else "text_completion",
                            "created": 1700000000, "model": "m"}

    def choice(text: str, finish: str | None, role: bool = False) -> dict[str, Any]:
        if api == "chat":
            delta = {"role": "assistant", "content": ""} if role else {"content": text}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}

    events = [event({**head, "choices": [choice("", None, role=True)]})] if api == "chat" else []
    for i, text in enumerate(texts):
        last = i == len(texts) - 1
        body = {**head, "choices": [choice(text, "length" if last else None)]}
        if last and fingerprint is not None and not include_usage:
            body["system_fingerprint"] = fingerprint
        events.append(event(body))
    if include_usage:
        tail = {**head, "choices": [], "usage": USAGE.to_openai()}
        if fingerprint is not None:
            tail["system_fingerprint"] = fingerprint
        events.append(event(tail))
    return b"".join(events) + b"data: [DONE]\n\n"


def pieces(data: bytes, how: str) -> list[bytes]:
    if how == "whole":
        return [data]
    if how == "events":
        return [part + b"\n\n" for part in data.split(b"\n\n")[:-1]]
    size = {"bytes": 1, "sevens": 7}[how]
    return [data[i:i + size] for i in range(0, len(data), size)]


def relay(chunks: list[bytes], *, strip: bool) -> tuple[bytes, UsageRelay]:
    r = UsageRelay(strip=strip)
    out = b"".join(r.feed(chunk) for chunk in chunks) + r.flush()
    return out, r


SHAPES = [  # api, texts, fingerprint
    ("chat", ["Hel", "lo", "!"], FINGERPRINT),
    ("chat", ["Hel", "lo", "!"], None),  # --fingerprint-mode none
    ("chat", [TRICKY, "x"], FINGERPRINT),  # keys inside text are escaped: never mistaken for events
    ("chat", ["one event only"], FINGERPRINT),
    ("completions", ["Once", " upon", " a time"], FINGERPRINT),
    ("completions", [TRICKY], None),
]


@pytest.mark.parametrize("how", ["whole", "events", "bytes", "sevens"])
@pytest.mark.parametrize(("api", "texts", "fingerprint"), SHAPES)
def test_stripping_gives_the_bytes_vllm_sends_without_include_usage(api: str, texts: list[str], fingerprint: str | None,
                                                                     how: str) -> None:
    upstream = vllm_stream(api, texts, include_usage=True, fingerprint=fingerprint)
    out, r = relay(pieces(upstream, how), strip=True)
    assert out == vllm_stream(api, texts, include_usage=False, fingerprint=fingerprint)
    assert r.usage == USAGE


@pytest.mark.parametrize("how", ["whole", "bytes"])
@pytest.mark.parametrize(("api", "texts", "fingerprint"), SHAPES)
def test_a_client_that_asked_gets_the_stream_untouched(api: str, texts: list[str], fingerprint: str | None,
                                                        how: str) -> None:
    upstream = vllm_stream(api, texts, include_usage=True, fingerprint=fingerprint)
    out, r = relay(pieces(upstream, how), strip=False)
    assert out == upstream and r.usage == USAGE


def test_whole_events_without_usage_pass_through_as_the_same_objects() -> None:
    """The fast path: a chunk that ends on an event boundary and holds no key is returned as it came."""
    r = UsageRelay(strip=True)
    chunk = event({"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]})
    assert r.feed(chunk) is chunk


@pytest.mark.parametrize("cut", ["after-finish", "mid-usage", "no-usage-event"])
def test_a_stream_without_a_usage_event_is_passed_on_whole(cut: str) -> None:
    """A backend that ignores include_usage, or a stream cut short: nothing is lost or changed, no usage is known."""
    without = vllm_stream("chat", ["a", "b"], include_usage=False, fingerprint=None)
    upstream = {"after-finish": without.removesuffix(b"data: [DONE]\n\n"),
                "mid-usage": without.removesuffix(b"data: [DONE]\n\n") + b'data: {"id":"x","choices":[],"usa',
                "no-usage-event": without}[cut]
    out, r = relay(pieces(upstream, "sevens"), strip=True)
    assert out == upstream and r.usage is None
    assert r.events == 3  # role, "a", "b": the relay's count when usage is unknown


def chat_request(body: dict[str, Any]) -> InferenceRequest:
    messages = ({"role": "user", "content": "hi"},)
    return InferenceRequest("r", "chat", "m", body, bool(body.get("stream")), messages=messages)


@pytest.mark.parametrize(("options", "sent_options", "strip"), [
    (None, {"include_usage": True}, True),  # no stream_options: spliced in
    ({"include_usage": False}, {"include_usage": True}, True),
    ({"include_usage": False, "continuous_usage_stats": True}, {"include_usage": True}, True),  # inert without usage
    ({"continuous_usage_stats": False}, {"include_usage": True}, True),
    ({"include_usage": True}, {"include_usage": True}, False),  # asked: sent as is, passed as is
    ({"include_usage": True, "continuous_usage_stats": True}, {"include_usage": True, "continuous_usage_stats": True}, False),
    ({"include_usage": "maybe"}, {"include_usage": "maybe"}, False),  # the backend judges odd values
])
def test_streams_ask_for_usage_upstream(options: dict[str, Any] | None, sent_options: dict[str, Any], strip: bool) -> None:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    if options is not None:
        body["stream_options"] = options
    raw = orjson.dumps(body)
    sent, stripping = ask_for_usage(chat_request(body), raw)
    assert orjson.loads(sent) == {**body, "stream_options": sent_options} and stripping is strip
    if options is None:  # the client's bytes are kept; only the key is added
        assert sent.startswith(raw[:-1]) and sent.endswith(b"}")


def test_stream_options_null_and_whitespace_bodies_still_parse() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    raw = orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n"
    sent, strip = ask_for_usage(chat_request(body), raw)
    assert orjson.loads(sent)["stream_options"] == {"include_usage": True} and strip
    nulled = {**body, "stream_options": None}
    sent, strip = ask_for_usage(chat_request(nulled), orjson.dumps(nulled))
    assert orjson.loads(sent)["stream_options"] == {"include_usage": True} and strip


def test_non_streaming_bodies_are_forwarded_unchanged() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": True}}
    raw = orjson.dumps(body)
    assert ask_for_usage(chat_request(body), raw) == (raw, False)


@pytest.mark.parametrize(("body", "usage"), [
    (orjson.dumps({"choices": [], "usage": USAGE.to_openai()}), USAGE),
    (orjson.dumps({"usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}), Usage(5, 2, 0)),
    (orjson.dumps({"usage": {"prompt_tokens": 5, "completion_tokens": None}}), None),
    (orjson.dumps({"error": {"message": "no"}}), None),
    (b"[1, 2]", None),
    (b"not json", None),
])
def test_usage_of_a_whole_body(body: bytes, usage: Usage | None) -> None:
    assert usage_from_body(body) == usage


def test_usage_round_trips_through_openais_shape() -> None:
    assert Usage.from_openai(USAGE.to_openai()) == USAGE
    assert USAGE.to_openai()["total_tokens"] == 24
    assert Usage.from_openai({"prompt_tokens": True, "completion_tokens": 1}) is None
