"""One error tree for the gateway and one translation to OpenAI-style JSON errors.

Every failure the gateway can explain is a `GatewayError` carrying its HTTP status and OpenAI
error type. `api.py` turns any of them into `{"error": {"message", "type", "param", "code"}}`;
anything else is a bug and becomes a generic 500 without a traceback in the body.
"""

from __future__ import annotations

import math
from typing import Any


class GatewayError(Exception):
    """Base of every error the gateway reports to a client."""

    status: int = 500
    error_type: str = "internal_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        """HTTP headers the response carries besides the body (e.g. Retry-After)."""
        return {}


class InvalidRequestError(GatewayError):
    """Malformed JSON, missing or ill-typed fields."""

    status = 400
    error_type = "invalid_request_error"


class AuthenticationError(GatewayError):
    """Missing, unknown, revoked or expired API key (OpenAI's 401). The message never quotes the key."""

    status = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    """A valid key asked for something it may not use: a model outside its list, an admin endpoint."""

    status = 403
    error_type = "invalid_request_error"
    code = "permission_denied"


class RetryLaterError(GatewayError):
    """Refused for now, not for good: `retry_after_s` becomes Retry-After (whole seconds, rounded up)."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class RateLimitError(RetryLaterError):
    """Over a key's or tenant's RPM or TPM (router/ratelimit.py). As OpenAI sends it: type `requests`
    or `tokens`, code `rate_limit_exceeded`, and Retry-After."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, error_type: str, retry_after_s: float) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.error_type = error_type


class AdmissionQueueFullError(RetryLaterError):
    """Admission (router/admission.py) shed the request, or refused it, because its pools' queue is full
    and it ranked lowest (lowest priority, its tenant furthest over its share, newest)."""

    status = 429
    error_type = "requests"
    code = "admission_queue_full"


class FleetOverloadedError(RetryLaterError):
    """Admission shed the request: it waited until its TTFT SLO (or the wait bound) passed, so even an
    immediate start would be late."""

    status = 503
    error_type = "service_unavailable_error"
    code = "fleet_overloaded"


class ModelNotFoundError(GatewayError):
    status = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLargeError(GatewayError):
    status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class CacheHitNotFoundError(GatewayError):
    """Feedback named no cache hit this key was served (or the gateway has no cache). Whether another
    key was served one under that id is never told."""

    status = 404
    error_type = "invalid_request_error"
    code = "cache_hit_not_found"


class NoHealthyInstanceError(GatewayError):
    """Every pool the plan allows has no healthy instance right now."""

    status = 503
    error_type = "service_unavailable_error"
    code = "no_healthy_instance"


class UpstreamError(GatewayError):
    """The instance refused, failed or broke the connection."""

    status = 502
    error_type = "upstream_error"
    code = "upstream_failed"


class UpstreamTimeoutError(UpstreamError):
    """No first byte (or no next chunk) within our timeout."""

    status = 504
    code = "upstream_timeout"


def internal_error_body() -> dict[str, Any]:
    """What a client sees for an unexpected exception: no traceback, no internals."""
    return GatewayError("internal error in the gateway; see its logs").to_body()
