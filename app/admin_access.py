"""Who may call /admin/*: the holder of the admin token, or, when none is set, loopback clients.

The token is compared in constant time. Without a token the client's address decides, and only
where that address is the real client's: bare uvicorn and Ray Serve's Python proxy pass it through
(the ASGI scope's `client`), but behind Ray Serve's HAProxy every request comes from HAProxy, so
there the loopback rule would let anyone in. There, without a token, /admin/* refuses everyone.
"""

from __future__ import annotations

import hmac
from typing import Mapping

from fleetgate.app.settings import is_loopback
from fleetgate.core.errors import AuthenticationError, PermissionDeniedError
from fleetgate.router.keyring import bearer


class AdminAccess:
    def __init__(self, token: str | None, *, client_address_known: bool = True) -> None:
        self._token = token.encode() if token else None
        self._client_address_known = client_address_known

    def check(self, headers: Mapping[str, str], client_host: str | None) -> None:
        """Return when the caller may use /admin/*; AuthenticationError (401, missing or wrong
        token) or PermissionDeniedError (403, no token set and not a known loopback client)."""
        if self._token is not None:
            given = bearer(headers).encode()
            if not given or not hmac.compare_digest(given, self._token):
                raise AuthenticationError("/admin/* needs the admin token: `Authorization: Bearer <token>`")
            return
        if not self._client_address_known:
            raise PermissionDeniedError("/admin/* needs an admin token here (--admin-token-env): behind this "
                                        "proxy the client's address is unknown, so loopback cannot be checked")
        if client_host is None or not is_loopback(client_host):
            raise PermissionDeniedError("/admin/* answers loopback clients only, as no admin token is set "
                                        "(--admin-token-env)")
