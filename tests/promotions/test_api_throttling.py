"""Issue 21's throttling of the public API: per client address (``API_THROTTLE_SUBSCRIBE``,
``API_THROTTLE_ANON_READ``), per e-mail address (``API_THROTTLE_SUBSCRIBE_EMAIL``), counted in the Redis cache
every web process shares, 429 with ``Retry-After``; open when Redis does not answer. Each test is the probe's
request or its equivalent, and failed before the change."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.test import RequestFactory
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.test import APIClient
from rest_framework.views import APIView
from structlog.testing import capture_logs

from promotions.api.throttles import AnonymousReadThrottle
from promotions.models import Product, Subscription
from tests.factories import ProductFactory, PromoFactory
from tests.net import free_port

pytestmark = pytest.mark.django_db

ACCEPTED = {200, 201, 202}  # the subscribe endpoint's answers, whatever it says about the address


def _limit(scope: str) -> int:
    return int(str(api_settings.DEFAULT_THROTTLE_RATES[scope]).split("/")[0])


@pytest.fixture
def rates(settings):
    """Set throttle rates for one test: ``rates(subscribe="3/hour")``."""

    def set_rates(**scopes: str | None) -> None:
        framework = dict(settings.REST_FRAMEWORK)
        framework["DEFAULT_THROTTLE_RATES"] = {**framework["DEFAULT_THROTTLE_RATES"], **scopes}
        settings.REST_FRAMEWORK = framework

    return set_rates


def _subscribe(client: APIClient, product: Product, email: str, **extra: Any):
    return client.post(f"/api/products/{product.pk}/subscriptions", {"email": email}, format="json", **extra)


def test_the_probes_300_subscriptions_from_one_client_get_429_after_the_limit():
    """Given the default rates, when one client subscribes 300 different addresses (the probe), then the first
    ``API_THROTTLE_SUBSCRIBE`` are taken and every later one is 429 with ``Retry-After`` and a JSON detail."""
    product = ProductFactory()
    client = APIClient()
    limit = _limit("subscribe")

    responses = [_subscribe(client, product, f"victim{n}@example.com") for n in range(300)]

    statuses = [r.status_code for r in responses]
    assert set(statuses[:limit]) <= ACCEPTED
    assert set(statuses[limit:]) == {429}
    refused = responses[limit]
    assert refused["Content-Type"] == "application/json"
    assert 0 < int(refused["Retry-After"]) <= 3600  # the window opened by the first request, an hour by default
    assert "throttled" in refused.json()["detail"]
    assert Subscription.objects.count() == limit


def test_x_forwarded_for_does_not_escape_the_limit_without_configured_proxies(rates):
    """Given ``API_NUM_PROXIES`` 0 (the default), when a client writes a new ``X-Forwarded-For`` on each
    request, then its requests still count under its own address: the header is anyone's to write."""
    rates(subscribe="3/hour")
    product = ProductFactory()
    client = APIClient()

    statuses = [
        _subscribe(client, product, f"a{n}@example.com", HTTP_X_FORWARDED_FOR=f"203.0.113.{n}").status_code
        for n in range(5)
    ]

    assert statuses[3:] == [429, 429]


def test_behind_a_configured_proxy_each_forwarded_client_has_its_own_limit(rates, settings):
    """Given one proxy in front (``API_NUM_PROXIES=1``), when two clients reach the API through it, then each
    is counted under the address the proxy forwarded, not the proxy's own."""
    rates(subscribe="2/hour")
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    product = ProductFactory()
    client = APIClient()

    first = [_subscribe(client, product, f"f{n}@example.com", HTTP_X_FORWARDED_FOR="203.0.113.1") for n in range(3)]
    second = _subscribe(client, product, "s@example.com", HTTP_X_FORWARDED_FOR="203.0.113.2")

    assert [r.status_code for r in first][2] == 429
    assert second.status_code in ACCEPTED


def test_one_address_is_throttled_from_any_client_and_counted_under_a_keyed_hash(rates, redis_client):
    """Given ``API_THROTTLE_SUBSCRIBE_EMAIL=2/day``, when one address (in any case, with spaces) is subscribed
    to three products from three client addresses, then the third is 429; Redis holds no trace of the
    address itself, only of a keyed hash of it."""
    rates(subscribe_email="2/day")
    products = ProductFactory.create_batch(3)
    client = APIClient()
    spellings = ["victim@example.com", " Victim@Example.com", "VICTIM@example.com "]

    statuses = [
        _subscribe(client, product, email, REMOTE_ADDR=f"198.51.100.{n}").status_code
        for n, (product, email) in enumerate(zip(products, spellings, strict=True))
    ]

    assert statuses[:2] != [429, 429] and set(statuses[:2]) <= ACCEPTED
    assert statuses[2] == 429
    keys = [key.decode() for key in redis_client.scan_iter(match="marketplace:*:throttle:subscribe_email:*")]
    assert keys
    assert not any("victim" in key.lower() for key in keys)


def test_anonymous_reads_are_throttled_per_client_and_staff_reads_are_not(rates, staff_api):
    """Given ``API_THROTTLE_ANON_READ=3/minute``, when a client without a token reads promos four times, then
    the fourth is 429 with ``Retry-After``; a staff token's reads from the same address are not counted."""
    rates(anon_read="3/minute")
    anonymous = APIClient()

    statuses = [anonymous.get("/api/promos").status_code for _ in range(4)]
    detail = anonymous.get(f"/api/promos/{PromoFactory().pk}")
    staff_statuses = {staff_api.get("/api/promos").status_code for _ in range(5)}

    assert statuses == [200, 200, 200, 429]
    assert detail.status_code == 429
    assert 0 < int(detail["Retry-After"]) <= 60
    assert staff_statuses == {200}


def test_a_rate_set_off_does_not_throttle(rates):
    """Given ``API_THROTTLE_SUBSCRIBE=off`` (no rate in the settings), subscriptions from one client are not
    limited by it."""
    rates(subscribe=None)
    product = ProductFactory()

    statuses = {_subscribe(APIClient(), product, f"o{n}@example.com").status_code for n in range(_limit("anon_read"))}

    assert statuses <= ACCEPTED


def test_the_api_stays_up_unthrottled_when_the_cache_does_not_answer(settings):
    """Given a cache (Redis) that refuses connections, when a client subscribes, then it is served (fail open)
    and a WARNING ``api.throttle_unavailable`` line says the throttle could not count."""
    settings.CACHES = {
        "default": {**settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{free_port()}/0"},
    }
    product = ProductFactory()

    with capture_logs() as logs:
        response = _subscribe(APIClient(), product, "up@example.com")

    assert response.status_code in ACCEPTED
    unavailable = [line for line in logs if line["event"] == "api.throttle_unavailable"]
    assert unavailable
    assert {line["log_level"] for line in unavailable} == {"warning"}
    assert {line["scope"] for line in unavailable} == {"subscribe", "subscribe_email"}


def test_the_throttles_count_in_the_cache_every_web_process_shares(redis_client):
    """The count lives in Redis (the cache every web process reads), not in a process: a subscription leaves
    its window's keys there, with the rate's period as their expiry."""
    _subscribe(APIClient(), ProductFactory(), "shared@example.com")

    keys = {key.decode() for key in redis_client.scan_iter(match="marketplace:*:throttle:subscribe:*")}
    counter = next(key for key in keys if not key.endswith(":opened"))
    assert int(redis_client.get(counter) or 0) == 1
    assert 0 < redis_client.ttl(counter) <= 3600


def test_concurrent_requests_from_one_client_are_counted_exactly(rates):
    """Given ``API_THROTTLE_ANON_READ=20/minute``, when 8 threads (as many web processes) check 200 requests of
    one client at once, then exactly 20 are allowed: the count is one atomic Redis counter, not a history each
    request reads and writes back (DRF's ``AnonRateThrottle`` lets through several times the rate here)."""
    rates(anon_read="20/minute")
    barrier = threading.Barrier(8)

    def check_25() -> int:
        barrier.wait(timeout=60)
        request = Request(RequestFactory().get("/api/promos", REMOTE_ADDR="192.0.2.7"))
        return sum(AnonymousReadThrottle().allow_request(request, APIView()) for _ in range(25))

    with ThreadPoolExecutor(max_workers=8) as pool:
        allowed = sum(pool.map(lambda _: check_25(), range(8)))

    assert allowed == 20


def test_a_forwarded_address_that_is_not_an_ip_is_counted_under_its_hash(rates, settings, redis_client):
    """Given a configured proxy, when X-Forwarded-For carries something that is not an address (spaces, a
    control character, 300 characters), then it is counted all the same, under a hash: no cache key warning,
    no key longer than a hash."""
    rates(subscribe="1/hour")
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    product = ProductFactory()
    forged = "not an\taddress " + "x" * 300

    statuses = [
        _subscribe(APIClient(), product, f"h{n}@example.com", HTTP_X_FORWARDED_FOR=forged).status_code for n in range(2)
    ]

    assert statuses[1] == 429
    keys = [key.decode() for key in redis_client.scan_iter(match="marketplace:*:throttle:subscribe:*")]
    assert keys
    assert all(len(key) < 120 and "sha256-" in key for key in keys)
