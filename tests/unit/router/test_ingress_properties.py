"""Property tests (hypothesis) of the ingress parser: any bytes and any JSON value, on every API,
give an `InferenceRequest` the router can render, or a 4xx GatewayError in OpenAI's shape; never
another exception (which the app would answer with a 500)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fleetgate.core.errors import GatewayError
from fleetgate.core.prefix import render_chat
from fleetgate.core.request import ApiKind
from fleetgate.router.ingress import parse_cache_feedback, parse_inference_request

APIS: tuple[ApiKind, ...] = ("chat", "completions", "messages", "responses", "embeddings", "tokenize", "detokenize")
BOUNDED = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=30,
)
FIELDS = ["model", "messages", "prompt", "input", "tools", "tool_calls", "stream", "max_tokens", "n", "temperature",
          "user", "system", "content", "role", "tokens", "previous_response_id", "max_output_tokens", "type", "text"]
shaped = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["m", "user", "assistant", "text", ""]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(FIELDS), children, max_size=5),
    max_leaves=25,
)
"""JSON built from the field names the parser looks at, so examples get past its first checks."""


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def parse_and_render(raw: bytes, api: ApiKind) -> None:
    try:
        request = parse_inference_request(raw, api, request_id="r", arrival_s=0.0, headers={})
    except GatewayError as error:
        assert 400 <= error.status < 500, error
        body = error.to_body()["error"]
        assert set(body) == {"message", "type", "param", "code"} and body["type"]
        return
    if request.messages is not None:
        render_chat(request.messages, request.tools)


@pytest.mark.parametrize("api", APIS)
@BOUNDED
@given(raw=st.binary(max_size=200))
def test_any_bytes(api: ApiKind, raw: bytes) -> None:
    parse_and_render(raw, api)


@pytest.mark.parametrize("api", APIS)
@BOUNDED
@given(value=json_values)
def test_any_json_value(api: ApiKind, value: Any) -> None:
    parse_and_render(json.dumps(value).encode(), api)


@pytest.mark.parametrize("api", APIS)
@BOUNDED
@given(body=st.dictionaries(st.sampled_from(FIELDS), shaped, max_size=6), model=st.booleans())
@example(body={"messages": [{"role": "user", "content": "PLACEHOLDER"}]}, model=True)
@example(body={"tools": "PLACEHOLDER", "messages": [{"role": "user", "content": "x"}]}, model=True)
def test_bodies_shaped_like_requests(api: ApiKind, body: dict[str, Any], model: bool) -> None:
    if model:
        body = {**body, "model": "m"}
    raw = json.dumps(body).replace('"PLACEHOLDER"', deep(300)).encode()  # a JSON bomb past orjson's dump limit
    parse_and_render(raw, api)


@BOUNDED
@given(raw=st.binary(max_size=100) | json_values.map(lambda v: json.dumps(v).encode()))
def test_cache_feedback_bodies(raw: bytes) -> None:
    try:
        assert isinstance(parse_cache_feedback(raw), str)
    except GatewayError as error:
        assert 400 <= error.status < 500


def test_an_empty_responses_input_is_a_400() -> None:
    """Found by schemathesis: `input: []` reached vLLM (the emulator answered 500)."""
    with pytest.raises(GatewayError) as refused:
        parse_inference_request(b'{"model": "m", "input": []}', "responses", request_id="r", arrival_s=0.0,
                                headers={})
    assert refused.value.status == 400 and refused.value.param == "input"
