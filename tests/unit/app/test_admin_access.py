"""/admin/*: the admin token (constant-time compare), or loopback clients where the address is known."""

from __future__ import annotations

import pytest

from fleetgate.app.admin_access import AdminAccess
from fleetgate.core.errors import AuthenticationError, PermissionDeniedError


def test_with_a_token_only_its_bearer_gets_in_wherever_it_calls_from() -> None:
    access = AdminAccess("t0ken")
    access.check({"authorization": "Bearer t0ken"}, "10.0.0.9")
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "t0ken"}):
        with pytest.raises(AuthenticationError):
            access.check(headers, "127.0.0.1")


def test_without_a_token_loopback_only_and_nobody_where_the_client_address_is_unknown() -> None:
    AdminAccess(None).check({}, "127.0.0.1")
    AdminAccess(None).check({}, "::1")
    for host in ("10.0.0.9", None):
        with pytest.raises(PermissionDeniedError):
            AdminAccess(None).check({}, host)
    with pytest.raises(PermissionDeniedError, match="admin token"):
        AdminAccess(None, client_address_known=False).check({}, "127.0.0.1")
