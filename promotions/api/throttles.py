"""Throttles of the public API (DRF's throttle interface, counted in the shared Redis cache).

Every web process counts in the same place (``CACHES["default"]``, Redis), with Redis' atomic ``SET NX`` and
``INCR``: DRF's own ``SimpleRateThrottle`` reads a request history and writes it back, so concurrent requests
from one client overwrite each other's entries (8 threads checking 200 requests of one client at a rate of
20 let 76-109 through with it, exactly 20 with these: ``test_concurrent_requests_from_one_client_are_counted_
exactly``). Here a window opens at a client's first request and lasts the rate's period; the count in it is
exact however many processes serve the client. Over the limit: 429 with ``Retry-After`` (the seconds until
the window closes) and the API's JSON error body.

Client addresses come from DRF (``REST_FRAMEWORK["NUM_PROXIES"]``: 0 by default, so ``X-Forwarded-For`` is
never trusted unless the deployment says how many proxies add to it). An e-mail address is counted under a
keyed hash of its normalised form, never the address itself. When the cache does not answer, requests are
let through (fail open) with a WARNING ``api.throttle_unavailable`` line: the API stays up, unthrottled,
while Redis is down (with the default ``CACHE_URL``, the broker's Redis, nothing is mailed meanwhile either).
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from typing import Any

import structlog
from django.core.cache import cache
from django.utils.crypto import salted_hmac
from redis.exceptions import RedisError
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

__all__ = ["AnonymousReadThrottle", "SubscribeClientThrottle", "SubscribeEmailThrottle"]

log = structlog.get_logger(__name__)


class _WindowThrottle(BaseThrottle):
    """A fixed window per key, opened by the key's first request, counted atomically in the cache."""

    #: The key of the rate in ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]`` (None there: not throttled).
    scope: str
    cache_format = "throttle:%(scope)s:%(ident)s"

    def __init__(self) -> None:
        # Read at each request, not frozen at import as SimpleRateThrottle.THROTTLE_RATES is.
        rate = api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)
        self.limit, self.period = _parse_rate(rate) if isinstance(rate, str) else (None, 0)
        self.retry_after: float | None = None

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        """The key a request counts under; None: not counted by this throttle."""
        raise NotImplementedError

    def allow_request(self, request: Request, view: APIView) -> bool:
        if self.limit is None:
            return True  # the scope's rate is "off"
        key = self.get_cache_key(request, view)
        if key is None:
            return True
        now = time.time()
        try:
            # Both keys expire with the window; the second holds when it opened, for Retry-After.
            cache.add(f"{key}:opened", now, timeout=self.period)
            cache.add(key, 0, timeout=self.period)
            try:
                count = cache.incr(key)
            except ValueError:  # the window closed between add and incr: this request opens the next one
                cache.add(key, 1, timeout=self.period)
                count = 1
            opened = cache.get(f"{key}:opened", now)
        except RedisError as exc:
            log.warning("api.throttle_unavailable", scope=self.scope, error=type(exc).__name__)
            return True
        self.retry_after = max(0.0, float(opened) + self.period - now)
        return bool(count <= self.limit)

    def wait(self) -> float | None:
        return self.retry_after

    def client(self, request: Request) -> str:
        """The client's address as the cache key's part: from a configured proxy's X-Forwarded-For it is
        whatever the proxy wrote, so anything but an IP address is hashed (a key stays short and printable)."""
        ident = str(self.get_ident(request) or "")
        try:
            return str(ipaddress.ip_address(ident))
        except ValueError:
            return "sha256-" + hashlib.sha256(ident.encode()).hexdigest()


def _parse_rate(rate: str) -> tuple[int, int]:
    """``"20/hour"`` -> (20, 3600): DRF's notation (the settings validated it)."""
    count, unit = rate.split("/")
    return int(count), {"s": 1, "m": 60, "h": 3600, "d": 86_400}[unit.strip()[0]]


class AnonymousReadThrottle(_WindowThrottle):
    """Reads by callers without a token, per client address (``API_THROTTLE_ANON_READ``)."""

    scope = "anon_read"

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        if request.user is not None and request.user.is_authenticated:
            return None  # staff tokens are not the public's reads
        return self.cache_format % {"scope": self.scope, "ident": self.client(request)}


class SubscribeClientThrottle(_WindowThrottle):
    """Subscriptions per client address, whatever the addresses subscribed (``API_THROTTLE_SUBSCRIBE``)."""

    scope = "subscribe"

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        return self.cache_format % {"scope": self.scope, "ident": self.client(request)}


class SubscribeEmailThrottle(_WindowThrottle):
    """Subscriptions per e-mail address, from any client (``API_THROTTLE_SUBSCRIBE_EMAIL``): bounds what one
    address can be sent however many clients ask for it. A body without a string ``email`` is not counted
    here (the view refuses it with 400)."""

    scope = "subscribe_email"

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        data: Any = request.data
        email = data.get("email") if isinstance(data, dict) else None
        if not isinstance(email, str) or not email.strip():
            return None
        # Keyed by the secret key: the cache holds no address, nor a hash a list of addresses could be matched to.
        digest = salted_hmac("promotions.api.throttles.email", email.strip().lower(), algorithm="sha256").hexdigest()
        return self.cache_format % {"scope": self.scope, "ident": digest}
