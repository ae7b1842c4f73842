"""The admin login's throttle: django-axes' backend, which counts failed logins per username and address and
refuses a locked-out pair. ``authenticate()`` without a request (a shell, a management command) has no client
to throttle: axes would raise ``ValueError`` there, this backend steps aside and ``ModelBackend`` answers.

The address it counts is the one the API's throttles count (``client_address``): REMOTE_ADDR, or behind
``API_NUM_PROXIES`` proxies the address the first of them saw in X-Forwarded-For."""

from __future__ import annotations

from typing import Any

from axes.backends import AxesStandaloneBackend
from django.http import HttpRequest
from rest_framework.throttling import BaseThrottle

__all__ = ["LoginThrottleBackend", "client_address"]


def client_address(request: HttpRequest) -> str | None:
    """DRF's client identity (``NUM_PROXIES``), so the admin's login and the API agree on who a client is.
    Axes' own proxy support needs django-ipware, which the project does not install: without this callable it
    counts REMOTE_ADDR, the proxy's address behind one - one attacker would lock an account out for everyone."""
    ident = BaseThrottle().get_ident(request)  # type: ignore[arg-type]  # reads only request.META
    # None without an address (``Client.login()`` builds a request without one): axes then counts no address.
    return str(ident) if ident else None


class LoginThrottleBackend(AxesStandaloneBackend):  # type: ignore[misc]
    def authenticate(self, request: HttpRequest | None, username: str | None = None, password: str | None = None,
                     **kwargs: Any) -> None:  # fmt: skip
        """Raise ``AxesBackendPermissionDenied`` for a locked-out client; never authenticates anyone itself."""
        if request is not None:
            super().authenticate(request, username, password, **kwargs)
