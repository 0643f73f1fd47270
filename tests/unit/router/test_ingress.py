"""Ingress: a client's Cache-Control header becomes the request's cache opt-out."""

from __future__ import annotations

import pytest

from fleetgate.router.ingress import parse_inference_request

BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'


@pytest.mark.parametrize(
    ("cache_control", "bypass"),
    [
        (None, False),
        ("no-cache", True),
        ("No-Store", True),
        ("max-age=0, no-cache", True),
        ("no-cache=\"set-cookie\"", True),
        ("max-age=60", False),
        ("no-transform", False),
    ],
)
def test_cache_control_no_cache_or_no_store_bypasses_the_cache(cache_control: str | None, bypass: bool) -> None:
    headers = {} if cache_control is None else {"cache-control": cache_control}
    request = parse_inference_request(BODY, "chat", request_id="r1", arrival_s=0.0, headers=headers)
    assert request.cache_bypass is bypass
