"""Rate limits on the in-memory storage: RPM and TPM per key and tenant, all-or-nothing charges,
corrections with the real usage, and OpenAI's 429 shape."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from fleetgate.core.errors import RateLimitError
from fleetgate.core.request import InferenceRequest
from fleetgate.router.metrics import GatewayMetrics
from fleetgate.router.ratelimit import RateLimiter, Subject, admission_tokens


def limiter() -> tuple[RateLimiter, GatewayMetrics]:
    metrics = GatewayMetrics(CollectorRegistry())
    return RateLimiter(metrics), metrics


def count(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_the_rpm_limit_refuses_the_next_request_with_openais_429() -> None:
    limits, metrics = limiter()
    subject = Subject(key_id="k1", tenant="acme", key_rpm=2)
    await limits.admit(subject, 10)
    await limits.admit(subject, 10)
    with pytest.raises(RateLimitError) as refused:
        await limits.admit(subject, 10)
    error = refused.value
    assert (error.status, error.code, error.error_type) == (429, "rate_limit_exceeded", "requests")
    assert 1 <= int(error.headers()["Retry-After"]) <= 60 and "k1" in error.message
    assert count(metrics, "fleetgate_ratelimited_requests_total", scope="key", limit="rpm") == 1
    await limits.admit(Subject(key_id="k2", tenant="acme", key_rpm=2), 10)  # another key's own budget


async def test_a_tenant_limit_is_shared_by_its_keys_and_a_refusal_charges_nothing() -> None:
    limits, _ = limiter()
    first = Subject(key_id="k1", tenant="acme", key_rpm=5, tenant_rpm=3)
    second = Subject(key_id="k2", tenant="acme", key_rpm=1, tenant_rpm=3)
    await limits.admit(first, 1)
    await limits.admit(second, 1)
    with pytest.raises(RateLimitError):
        await limits.admit(second, 1)  # k2's own RPM; the tenant's hit is refunded
    await limits.admit(first, 1)  # so the tenant still has this one
    with pytest.raises(RateLimitError, match="tenant acme"):
        await limits.admit(first, 1)


async def test_tpm_is_charged_at_admission_and_corrected_with_the_real_usage() -> None:
    limits, _ = limiter()
    subject = Subject(key_id="k1", tenant="acme", key_tpm=1000)
    await limits.admit(subject, 900)  # prompt + max_tokens
    with pytest.raises(RateLimitError) as refused:
        await limits.admit(subject, 200)
    assert refused.value.error_type == "tokens"
    await limits.correct(subject, charged_tokens=900, used_tokens=300)  # it used far less
    await limits.admit(subject, 600)
    await limits.correct(subject, charged_tokens=600, used_tokens=700)  # or more: a debt is charged too
    with pytest.raises(RateLimitError):
        await limits.admit(subject, 1)


def test_admission_tokens_are_the_prompt_plus_the_most_it_may_generate() -> None:
    request = InferenceRequest(request_id="r", api="completions", model="m", body={}, stream=False,
                               prompt="x" * 400, max_tokens=50, n=2)
    assert admission_tokens(request) == request.prompt_tokens + 100
    unbounded = InferenceRequest(request_id="r", api="completions", model="m", body={}, stream=False, prompt="x" * 400)
    assert admission_tokens(unbounded) == unbounded.prompt_tokens  # corrected upwards once the usage is known


async def test_no_limits_means_no_storage_calls_and_no_refusal() -> None:
    limits, metrics = limiter()
    for _ in range(100):
        await limits.admit(Subject(key_id="k1", tenant="acme"), 10_000)
    assert count(metrics, "fleetgate_ratelimit_errors_total") == 0
