"""The cache's rules: which requests bypass it, which answers are refused, which stored answers fit a request."""

from __future__ import annotations

from typing import Any

import pytest

from fleetgate.cache.policy import CacheableConditions, CachePolicy
from fleetgate.cache.rules import bypass_reason, fits, refusal
from fleetgate.cache.store import Answer
from fleetgate.core.request import InferenceRequest

ENABLED = CachePolicy(enabled=True)
TOOL = {"type": "function", "function": {"name": "f"}}


def request(**fields: Any) -> InferenceRequest:
    messages = ({"role": "user", "content": "hello"},)
    return InferenceRequest("r", "chat", "m", {"messages": list(messages)}, False, messages=messages, **fields)


@pytest.mark.parametrize(
    ("policy", "fields", "reason"),
    [
        (None, {}, "no-policy"),
        (CachePolicy(enabled=False), {}, "disabled"),
        (ENABLED, {}, None),
        (ENABLED, {"temperature": 0.7}, None),  # at the limit
        (ENABLED, {"temperature": 0.71}, "temperature"),
        (CachePolicy(enabled=True, cacheable=CacheableConditions(max_temperature=None)), {"temperature": 2.0}, None),
        (ENABLED, {"tools": (TOOL,)}, "tools"),
        (CachePolicy(enabled=True, cacheable=CacheableConditions(tools=True)), {"tools": (TOOL,)}, None),
        (ENABLED, {"n": 2}, "n"),
        (ENABLED, {"cache_bypass": True}, "client-no-cache"),  # Cache-Control: no-cache / no-store
        (CachePolicy(enabled=False), {"cache_bypass": True}, "disabled"),
        (CachePolicy(enabled=True, cacheable=CacheableConditions(max_n=2)), {"n": 2}, None),
    ],
)
def test_bypass_reason(policy: CachePolicy | None, fields: dict[str, Any], reason: str | None) -> None:
    assert bypass_reason(request(**fields), policy) == reason


@pytest.mark.parametrize(
    ("text", "finish", "reason"),
    [
        ("an answer", "stop", None),
        ("an answer", "length", None),
        ("an answer", "abort", "finish-abort"),
        ("", "stop", "empty"),
        ("", "abort", "empty"),
    ],
)
def test_refusal(text: str, finish: str, reason: str | None) -> None:
    assert refusal(Answer(text, finish)) == reason


@pytest.mark.parametrize(
    ("finish", "stored_max", "asked_max", "fit"),
    [
        ("stop", 16, None, True),
        ("stop", None, 500, True),
        ("length", 16, 16, True),
        ("length", 16, 8, True),
        ("length", 16, 17, False),  # the cached answer was cut shorter than this request allows
        ("length", 16, None, False),
        ("length", None, 8, False),
    ],
)
def test_fits(finish: str, stored_max: int | None, asked_max: int | None, fit: bool) -> None:
    assert fits(Answer("x", finish, stored_max), asked_max) is fit
