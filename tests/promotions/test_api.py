"""The JSON API contract: bearer-token auth for writes, public subscriptions, promo validation by field,
listing and detail with notification counts, the ``api_token`` command, and the health endpoints."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from marketplace.celery import app as celery_app
from promotions import tasks
from promotions.api.views import SUBSCRIBE_ANSWER
from promotions.models import FlashPromo, Notification, Product, PromoStatus, Subscription
from tests.factories import API_PERMISSIONS, ProductFactory, PromoFactory, SubscriptionFactory, grant

pytestmark = pytest.mark.django_db

PROMO_FIELDS = {"product_id", "title", "discount_percent", "starts_at", "ends_at"}


@pytest.fixture
def staff_user(django_user_model):
    """A staff user with the API's permissions (``conftest.API_PERMISSIONS``)."""
    user = django_user_model.objects.create_user(username="ops", password="x", is_staff=True)
    grant(user, *API_PERMISSIONS)
    return user


@pytest.fixture
def shopper_user(django_user_model):
    return django_user_model.objects.create_user(username="shopper", password="x", is_staff=False)


@pytest.fixture
def anonymous() -> APIClient:
    return APIClient()


def _client_with_token(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


@pytest.fixture
def staff(staff_user) -> APIClient:
    """A client authenticated with a staff user's bearer token."""
    return _client_with_token(AuthToken.objects.create(user=staff_user)[1])


@pytest.fixture
def shopper(shopper_user) -> APIClient:
    """A client authenticated with a non-staff user's bearer token."""
    return _client_with_token(AuthToken.objects.create(user=shopper_user)[1])


def _iso(value: str) -> datetime:
    """Parse an API time and require an explicit offset (``Z`` or ``+HH:MM``)."""
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, f"{value!r} has no UTC offset"
    return parsed


#: A start well inside the horizon for the parametrized cases (taken when the module is collected).
_SOON = (timezone.now() + timedelta(days=1)).replace(microsecond=0)


def _at(moment: datetime, *, offset_hours: int = 0) -> str:
    """``moment`` as an ISO 8601 time in the UTC offset ``offset_hours``."""
    return moment.astimezone(timezone.get_fixed_timezone(60 * offset_hours)).isoformat()


def _promo_payload(product: Product, **overrides: object) -> dict[str, object]:
    starts_at = timezone.now() + timedelta(hours=1)
    payload: dict[str, object] = {
        "product_id": product.pk,
        "title": "Half-price kettles",
        "discount_percent": 50,
        "starts_at": starts_at.isoformat(),
        "ends_at": (starts_at + timedelta(hours=2)).isoformat(),
    }
    payload.update(overrides)
    return payload


# --- Authentication and the api_token command --------------------------------------------------------------


def test_staff_token_creates_a_product(staff):
    """Given a staff user's bearer token, when a product is posted, then 201 returns its id and it is
    stored."""
    response = staff.post("/api/products", {"name": "Kettle", "price": "19.90"}, format="json")

    assert response.status_code == 201
    product = Product.objects.get(pk=response.json()["id"])
    assert (product.name, product.price) == ("Kettle", Decimal("19.90"))
    assert response.json() == {"id": product.pk, "name": "Kettle", "price": "19.90"}


def test_product_write_without_a_token_is_401_and_creates_nothing(anonymous):
    """Given no Authorization header, when a product is posted, then 401 asks for a Bearer token and no
    product exists."""
    response = anonymous.post("/api/products", {"name": "Kettle", "price": "19.90"}, format="json")

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert not Product.objects.exists()


@pytest.mark.parametrize(
    "header",
    ["Bearer not-a-real-token", "Bearer", "Bearer two words", "Token {key}", "Basic b3BzOng="],
    ids=["unknown-key", "no-key", "spaces", "wrong-keyword", "basic-auth"],
)
def test_product_write_with_a_wrong_token_is_401_and_creates_nothing(staff_user, header):
    """Given an Authorization header that is not ``Bearer <valid key>`` - even one holding a valid key under
    another keyword - when a product is posted, then 401 and nothing is stored."""
    key = AuthToken.objects.create(user=staff_user)[1]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header.format(key=key))

    response = client.post("/api/products", {"name": "Kettle", "price": "19.90"}, format="json")

    assert response.status_code == 401
    assert not Product.objects.exists()


def test_product_write_with_a_non_staff_token_is_403_and_creates_nothing(shopper):
    """Given a valid token of a user who is not staff, when a product is posted, then 403 and nothing is
    stored: authenticated, but not allowed."""
    response = shopper.post("/api/products", {"name": "Kettle", "price": "19.90"}, format="json")

    assert response.status_code == 403
    assert not Product.objects.exists()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"price": "1.00"}, "name"),
        ({"name": "Kettle"}, "price"),
        ({"name": "", "price": "1.00"}, "name"),
        ({"name": "Kettle", "price": "-0.01"}, "price"),
        ({"name": "Kettle", "price": "1.001"}, "price"),
        ({"name": "Kettle", "price": "cheap"}, "price"),
        ({"name": "Kettle\nDeluxe", "price": "1.00"}, "name"),
    ],
    ids=["no-name", "no-price", "blank-name", "negative-price", "three-decimals", "not-a-number", "two-lines"],
)
def test_invalid_product_is_400_by_field(staff, payload, field):
    """Given a staff token and an invalid product, when it is posted, then 400 names the field at fault."""
    response = staff.post("/api/products", payload, format="json")

    assert response.status_code == 400
    assert list(response.json()) == [field]
    assert not Product.objects.exists()


def test_api_token_command_prints_a_token_that_authenticates_api_writes(staff_user):
    """Given a staff user, when ``manage.py api_token USERNAME`` runs, then it prints a new token - shown this
    once: the database keeps only its SHA-512 digest, with an expiry ``API_TOKEN_TTL_DAYS`` ahead - and that
    token is accepted as a Bearer token."""
    out, err = StringIO(), StringIO()

    call_command("api_token", "ops", stdout=out, stderr=err)

    key = out.getvalue().strip()
    [stored] = AuthToken.objects.filter(user=staff_user)
    assert stored.digest == hashlib.sha512(key.encode()).hexdigest()
    assert key not in str(list(AuthToken.objects.values_list()))
    assert (
        timedelta(days=settings.API_TOKEN_TTL_DAYS - 1)
        < stored.expiry - timezone.now()
        <= timedelta(days=settings.API_TOKEN_TTL_DAYS)
    )
    assert "shown once" in err.getvalue()
    response = _client_with_token(key).post("/api/products", {"name": "Kettle", "price": "1"}, format="json")
    assert response.status_code == 201


def test_an_expired_token_is_refused_and_deleted(staff_user):
    """A token past its expiry gets 401, and its row is removed."""
    instance, key = AuthToken.objects.create(user=staff_user, expiry=timedelta(seconds=-1))

    response = _client_with_token(key).post("/api/products", {"name": "Kettle", "price": "1"}, format="json")

    assert response.status_code == 401
    assert not AuthToken.objects.filter(digest=instance.digest).exists()


def test_api_token_command_refuses_unknown_users():
    """Given no user of that name, when ``api_token`` runs, then it fails with a CommandError naming the
    user and how to create one."""
    with pytest.raises(CommandError, match=r"No user named 'ghost'.*createsuperuser"):
        call_command("api_token", "ghost", stdout=StringIO())


def test_api_token_command_refuses_non_staff_users_and_issues_no_token(shopper_user):
    """Given a user who is not staff, when ``api_token`` runs, then it fails and no token is created."""
    with pytest.raises(CommandError, match="not staff"):
        call_command("api_token", "shopper", stdout=StringIO())

    assert not AuthToken.objects.filter(user=shopper_user).exists()


# --- Subscriptions -----------------------------------------------------------------------------------------


def test_anyone_can_subscribe_to_a_product(anonymous):
    """Given a product and no token, when an email subscribes, then 202 (accepted: it must confirm first) and
    the subscription is stored unconfirmed - the consent rules are ``test_consent.py``'s."""
    product = ProductFactory()

    response = anonymous.post(f"/api/products/{product.pk}/subscriptions", {"email": "ann@example.com"}, format="json")

    assert response.status_code == 202
    assert response.json() == SUBSCRIBE_ANSWER
    subscription = Subscription.objects.get()
    assert (subscription.product_id, subscription.email) == (product.pk, "ann@example.com")
    assert subscription.confirmed_at is None


def test_subscribing_again_in_another_case_adds_nothing(anonymous):
    """Given a subscription, when the same address subscribes again in another case and with padding, then
    the answer is the same and one lower-case row exists."""
    product = ProductFactory()
    url = f"/api/products/{product.pk}/subscriptions"

    first = anonymous.post(url, {"email": "Ann.Lee@Example.COM"}, format="json")
    second = anonymous.post(url, {"email": "  ann.lee@example.com "}, format="json")

    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json() == second.json() == SUBSCRIBE_ANSWER
    assert list(Subscription.objects.values_list("email", flat=True)) == ["ann.lee@example.com"]


def test_one_address_may_subscribe_to_several_products(anonymous):
    """Given two products, when one address subscribes to both, then each product has its subscription."""
    products = ProductFactory.create_batch(2)

    for product in products:
        response = anonymous.post(
            f"/api/products/{product.pk}/subscriptions", {"email": "ann@example.com"}, format="json"
        )
        assert response.status_code == 202

    assert sorted(Subscription.objects.values_list("product_id", flat=True)) == [p.pk for p in products]


@pytest.mark.parametrize("payload", [{"email": "not-an-email"}, {"email": ""}, {"email": "a@b@example.com"}, {}])
def test_invalid_email_is_400_on_email(anonymous, payload):
    """Given a product, when an invalid or missing email subscribes, then 400 has errors under ``email``
    and no subscription exists."""
    product = ProductFactory()

    response = anonymous.post(f"/api/products/{product.pk}/subscriptions", payload, format="json")

    assert response.status_code == 400
    body = response.json()
    assert list(body) == ["email"]
    assert isinstance(body["email"], list)
    assert body["email"]
    assert not Subscription.objects.exists()


def test_subscribing_to_an_unknown_product_is_404(anonymous):
    """Given no product with the id, when an email subscribes to it, then 404 and nothing is stored."""
    missing_id = ProductFactory().pk + 1

    response = anonymous.post(f"/api/products/{missing_id}/subscriptions", {"email": "ann@example.com"}, format="json")

    assert response.status_code == 404
    assert not Subscription.objects.exists()


# --- Creating promos ---------------------------------------------------------------------------------------


def test_staff_creates_a_scheduled_promo(staff):
    """Given a staff token, when a valid promo is posted with times in any offset, then 201 returns it
    scheduled with its id, the same instants as ISO 8601 times with offsets, and zero notifications."""
    product = ProductFactory()
    starts_at = (timezone.now() + timedelta(hours=1)).replace(microsecond=0)
    ends_at = starts_at + timedelta(hours=2)
    payload = _promo_payload(
        product,
        starts_at=starts_at.astimezone(timezone.get_fixed_timezone(120)).isoformat(),
        ends_at=ends_at.isoformat(),
    )

    response = staff.post("/api/promos", payload, format="json")

    assert response.status_code == 201
    body = response.json()
    promo = FlashPromo.objects.get(pk=body["id"])
    assert body["status"] == PromoStatus.SCHEDULED == promo.status
    assert (body["product_id"], body["title"], body["discount_percent"]) == (
        product.pk,
        "Half-price kettles",
        50,
    )
    assert _iso(body["starts_at"]) == starts_at == promo.starts_at
    assert _iso(body["ends_at"]) == ends_at == promo.ends_at
    assert (body["activated_at"], body["ended_at"], body["activation_lag_seconds"]) == (None, None, None)
    assert body["notifications"] == {"pending": 0, "sending": 0, "sent": 0, "failed": 0}


def test_creating_a_promo_publishes_one_sweep_after_the_commit(staff, django_capture_on_commit_callbacks):
    """Given a staff token, when a promo is created, then exactly one ``check_active_promos`` publish is
    deferred to the commit (so a promo starting within the minute is not left to the next beat tick)."""
    product = ProductFactory()

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = staff.post("/api/promos", _promo_payload(product), format="json")

    assert response.status_code == 201
    assert callbacks == [tasks.publish_sweep]


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"discount_percent": 0}, {"discount_percent"}),
        ({"discount_percent": 100}, {"discount_percent"}),
        ({"discount_percent": 12.5}, {"discount_percent"}),
        ({"title": ""}, {"title"}),
        ({"title": "Flash\nSale"}, {"title"}),
        ({"title": "Flash\tSale\u2028"}, {"title"}),
        ({"starts_at": "2030-01-01T10:00:00"}, {"starts_at"}),
        ({"starts_at": "2030-1-1T10:00"}, {"starts_at"}),
        ({"ends_at": "2030-01-01"}, {"ends_at"}),
        ({"starts_at": _at(_SOON), "ends_at": _at(_SOON - timedelta(minutes=1))}, {"ends_at"}),
        ({"starts_at": _at(_SOON, offset_hours=-2), "ends_at": _at(_SOON - timedelta(hours=1))}, {"ends_at"}),
        ({"starts_at": "next tuesday"}, {"starts_at"}),
        ({"ends_at": "2030-02-30T10:00:00Z"}, {"ends_at"}),
        ({"product_id": "kettle"}, {"product_id"}),
        ({"product_id": 0}, {"product_id"}),
        (
            {"discount_percent": 0, "title": "", "starts_at": "soon"},
            {"discount_percent", "title", "starts_at"},
        ),
    ],
    ids=[
        "discount-0",
        "discount-100",
        "discount-fraction",
        "blank-title",
        "title-with-a-line-break",
        "title-with-a-tab-and-a-line-separator",
        "start-without-an-offset",
        "start-without-an-offset-in-a-loose-format",
        "end-as-a-date-only",
        "ends-before-start",
        "ends-before-start-in-another-offset",
        "malformed-start",
        "impossible-end-date",
        "product-id-not-integer",
        "product-id-zero",
        "several-at-once",
    ],
)
def test_invalid_promo_is_400_by_field_and_creates_nothing(staff, overrides, fields):
    """Given a staff token, when a promo with invalid fields is posted, then 400 keys an error list by each
    field at fault - and only those - and no promo exists."""
    payload = _promo_payload(ProductFactory(), **overrides)

    response = staff.post("/api/promos", payload, format="json")

    assert response.status_code == 400
    body = response.json()
    assert set(body) == fields
    assert all(isinstance(body[field], list) and body[field] for field in fields)
    assert not FlashPromo.objects.exists()


def test_promo_ending_when_it_starts_is_400_on_ends_at(staff):
    """Given a staff token, when a promo's end equals its start, then 400 with the error on ``ends_at``."""
    starts_at = (timezone.now() + timedelta(hours=1)).isoformat()
    payload = _promo_payload(ProductFactory(), starts_at=starts_at, ends_at=starts_at)

    response = staff.post("/api/promos", payload, format="json")

    assert response.status_code == 400
    assert list(response.json()) == ["ends_at"]
    assert not FlashPromo.objects.exists()


def test_promo_missing_every_field_is_400_naming_each(staff):
    """Given a staff token, when an empty object is posted as a promo, then 400 names every required field."""
    response = staff.post("/api/promos", {}, format="json")

    assert response.status_code == 400
    assert set(response.json()) == PROMO_FIELDS
    assert not FlashPromo.objects.exists()


def test_promo_for_an_unknown_product_is_400_on_product_id(staff):
    """Given a staff token, when a promo names a product that does not exist, then 400 with the error on
    ``product_id`` (a bad reference in the body, not a missing resource) and no promo exists."""
    product = ProductFactory()
    payload = _promo_payload(product, product_id=product.pk + 1)

    response = staff.post("/api/promos", payload, format="json")

    assert response.status_code == 400
    assert list(response.json()) == ["product_id"]
    assert not FlashPromo.objects.exists()


@pytest.mark.parametrize("body", ["{not json", '{"title": "unterminated', "", "[1, 2]", "null"])
def test_promo_body_that_is_not_a_json_object_is_400(staff, body):
    """Given a staff token, when the body sent as JSON is malformed or not an object, then 400 and no
    promo exists."""
    response = staff.post("/api/promos", body, content_type="application/json")

    assert response.status_code == 400
    assert not FlashPromo.objects.exists()


def test_promo_write_by_a_non_staff_user_is_403_and_creates_nothing(shopper):
    """Given a non-staff token, when a valid promo is posted, then 403 and no promo exists."""
    response = shopper.post("/api/promos", _promo_payload(ProductFactory()), format="json")

    assert response.status_code == 403
    assert not FlashPromo.objects.exists()


def test_promo_write_without_a_token_is_401_and_creates_nothing(anonymous):
    """Given no token, when a valid promo is posted, then 401 and no promo exists."""
    response = anonymous.post("/api/promos", _promo_payload(ProductFactory()), format="json")

    assert response.status_code == 401
    assert not FlashPromo.objects.exists()


# --- Reading promos ----------------------------------------------------------------------------------------


@pytest.fixture
def promos_by_status() -> dict[str, list[FlashPromo]]:
    """Two promos of each of scheduled, active and ended, with starts interleaved across statuses."""
    now = timezone.now()
    product = ProductFactory()
    promos: dict[str, list[Any]] = {"scheduled": [], "active": [], "ended": []}
    for index, status in enumerate(["ended", "active", "scheduled"] * 2):
        starts_at = now + timedelta(minutes=10 * (index - 3))
        extra = {"activated_at": starts_at} if status != "scheduled" else {}
        if status == "ended":
            extra["ended_at"] = starts_at + timedelta(minutes=5)
        promos[status].append(
            PromoFactory(
                product=product,
                status=status,
                starts_at=starts_at,
                ends_at=starts_at + timedelta(hours=1),
                **extra,
            )
        )
    return promos


@pytest.mark.parametrize("status", ["scheduled", "active", "ended"])
def test_listing_promos_filters_by_status(staff, promos_by_status, status):
    """Given promos in every status, when staff list promos with ``?status=``, then exactly the promos in
    that status come back, soonest start first."""
    response = staff.get("/api/promos", {"status": status})

    assert response.status_code == 200
    assert [item["id"] for item in response.json()] == [p.pk for p in promos_by_status[status]]
    assert {item["status"] for item in response.json()} == {status}


def test_listing_promos_without_a_filter_returns_all_soonest_first(staff, promos_by_status):
    """Given promos in every status, when staff list promos unfiltered, then all come back by start time."""
    response = staff.get("/api/promos")

    assert response.status_code == 200
    expected = sorted((p for group in promos_by_status.values() for p in group), key=lambda p: p.starts_at)
    assert [item["id"] for item in response.json()] == [p.pk for p in expected]


def test_listing_promos_pages_with_limit_and_offset_in_one_query(staff, promos_by_status):
    """Given six promos, when staff list them two at a time from the third, then exactly those two come back, in
    start order, with their counts - one SQL statement, whatever the notifications table holds (the others
    of the request read the token and the user's permissions)."""
    expected = sorted((p for group in promos_by_status.values() for p in group), key=lambda p: p.starts_at)

    with CaptureQueriesContext(connection) as queries:
        response = staff.get("/api/promos", {"limit": 2, "offset": 2})

    assert len([q for q in queries.captured_queries if '"promotions_flashpromo"' in q["sql"]]) == 1

    assert response.status_code == 200
    assert [item["id"] for item in response.json()] == [p.pk for p in expected[2:4]]
    assert all(set(item["notifications"]) == {"pending", "sending", "sent", "failed"} for item in response.json())


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": "all"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": 2**63}, "offset"),
    ],
    ids=["limit-0", "limit-over-500", "limit-not-a-number", "negative-offset", "offset-past-bigint"],
)
def test_listing_promos_with_a_bad_page_is_400_on_that_field(anonymous, query, field):
    """A page the list cannot serve is a 400 keyed by the parameter at fault (the list is public: at most 500)."""
    response = anonymous.get("/api/promos", query)

    assert response.status_code == 400
    assert list(response.json()) == [field]


@pytest.mark.parametrize("value", ["live", "SCHEDULED", "scheduled,active"])
def test_listing_promos_with_an_unknown_status_is_400_on_status(anonymous, value):
    """Given any promos, when the ``status`` filter is not a promo status, then 400 keyed by ``status``."""
    PromoFactory()

    response = anonymous.get("/api/promos", {"status": value})

    assert response.status_code == 400
    body = response.json()
    assert list(body) == ["status"]
    assert isinstance(body["status"], list)
    assert body["status"]


def _notify(promo: FlashPromo, counts: dict[str, int]) -> None:
    now = timezone.now()
    for status, count in counts.items():
        for subscription in SubscriptionFactory.create_batch(count, product=promo.product):
            Notification.objects.create(promo=promo, subscription=subscription, status=status, next_attempt_at=now)


def test_promo_detail_shows_times_state_and_notification_counts(staff):
    """Given an active promo with notifications in every status (and another promo's notifications), when staff
    read it by id, then its times are ISO 8601 with offsets and the counts by status are its own."""
    now = timezone.now()
    promo = PromoFactory(
        status=PromoStatus.ACTIVE,
        starts_at=now - timedelta(minutes=5),
        ends_at=now + timedelta(hours=1),
        activated_at=now - timedelta(minutes=5) + timedelta(milliseconds=250),
    )
    _notify(promo, {"pending": 3, "sending": 1, "sent": 4, "failed": 2})
    _notify(PromoFactory(product=promo.product), {"pending": 5, "sent": 1})

    response = staff.get(f"/api/promos/{promo.pk}")

    assert response.status_code == 200
    body = response.json()
    assert {"id", "status", "starts_at", "ends_at", "activated_at", "ended_at", "notifications"} <= set(body)
    assert (body["id"], body["status"], body["ended_at"]) == (promo.pk, "active", None)
    assert _iso(body["starts_at"]) == promo.starts_at
    assert _iso(body["ends_at"]) == promo.ends_at
    assert _iso(body["activated_at"]) == promo.activated_at
    assert body["activation_lag_seconds"] == 0.25
    assert body["notifications"] == {"pending": 3, "sending": 1, "sent": 4, "failed": 2}


def test_promo_list_counts_notifications_per_promo(staff):
    """Given two promos with different notifications, when staff list promos, then each carries its own
    counts (the counts of one promo's rows are not multiplied or shared with the other's)."""
    first, second = PromoFactory.create_batch(2, product=ProductFactory())
    _notify(first, {"pending": 2, "failed": 1})
    _notify(second, {"sent": 3})

    response = staff.get("/api/promos")

    counts = {item["id"]: item["notifications"] for item in response.json()}
    assert counts == {
        first.pk: {"pending": 2, "sending": 0, "sent": 0, "failed": 1},
        second.pk: {"pending": 0, "sending": 0, "sent": 3, "failed": 0},
    }


def test_unknown_promo_is_404(anonymous):
    """Given no promo with the id, when it is read, then 404."""
    missing_id = PromoFactory().pk + 1

    response = anonymous.get(f"/api/promos/{missing_id}")

    assert response.status_code == 404


# --- Health ------------------------------------------------------------------------------------------------


def test_healthz_answers_ok(anonymous):
    """When ``/healthz`` is requested, then 200 says the process serves requests."""
    response = anonymous.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ok_when_the_database_and_broker_answer(anonymous):
    """Given the test Postgres and Redis are up, when ``/readyz`` is requested, then 200 with both checks
    ok."""
    response = anonymous.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


def test_readyz_is_503_naming_the_broker_when_it_does_not_answer(anonymous, monkeypatch):
    """Given a broker URL nothing listens on, when ``/readyz`` is requested, then 503 marks the broker
    unreachable while the database check stays ok."""
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setattr(celery_app.conf, "broker_url", "redis://127.0.0.1:1/0")

    response = anonymous.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("unreachable: ")
