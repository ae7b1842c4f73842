"""The admin login's throttle: django-axes' backend, which counts failed logins per username and address and
refuses a locked-out pair. ``authenticate()`` without a request (a shell, a management command) has no client
to throttle: axes would raise ``ValueError`` there, this backend steps aside and ``ModelBackend`` answers."""

from __future__ import annotations

from typing import Any

from axes.backends import AxesStandaloneBackend
from django.http import HttpRequest

__all__ = ["LoginThrottleBackend"]


class LoginThrottleBackend(AxesStandaloneBackend):  # type: ignore[misc]
    def authenticate(self, request: HttpRequest | None, username: str | None = None, password: str | None = None,
                     **kwargs: Any) -> None:  # fmt: skip
        """Raise ``AxesBackendPermissionDenied`` for a locked-out client; never authenticates anyone itself."""
        if request is not None:
            super().authenticate(request, username, password, **kwargs)
