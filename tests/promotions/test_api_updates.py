"""The API refuses promos that make no sense, answers JSON for every error under ``/api/``, and lets staff_api
move or cancel a promo: each finding of issue 17 as the probe's request and what it gets now.

The real-worker side (a cancelled promo's countdown, a moved promo going live at its new start) is in
``test_tasks.py``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient
from structlog.testing import capture_logs

from marketplace import errors, urls
from promotions import fanout, notifications, services, tasks
from promotions.models import FlashPromo, Notification, Product, PromoStatus, Subscription
from tests.factories import ProductFactory, PromoFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def shopper(django_user_model) -> APIClient:
    """A client authenticated with a non-staff_api user's bearer token."""
    user = django_user_model.objects.create_user(username="shopper", password="x")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {AuthToken.objects.create(user=user)[1]}")
    return client


def _payload(product: Product, starts_at: datetime | str, ends_at: datetime | str, **extra: object) -> dict[str, Any]:
    def text(value: datetime | str) -> str:
        return value if isinstance(value, str) else value.isoformat()

    return {
        "product_id": product.pk,
        "title": "Half-price kettles",
        "discount_percent": 50,
        "starts_at": text(starts_at),
        "ends_at": text(ends_at),
        **extra,
    }


def _errors(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 400, response.content
    body: dict[str, list[str]] = response.json()
    assert all(isinstance(messages, list) and messages for messages in body.values())
    return body


# --- Creating: windows that make no sense are refused -------------------------------------------------------


def test_a_promo_entirely_in_the_past_is_400_on_starts_at(staff_api):
    """Finding: a promo whose whole window had passed got 201 ``scheduled``, then was silently ended. Now
    400 on ``starts_at``, and nothing is stored."""
    now = timezone.now()

    response = staff_api.post(
        "/api/promos", _payload(ProductFactory(), now - timedelta(hours=3), now - timedelta(hours=1)), format="json"
    )

    assert list(_errors(response)) == ["starts_at"]
    assert "past" in response.json()["starts_at"][0]
    assert not FlashPromo.objects.exists()


def test_a_promo_started_years_ago_is_400_on_starts_at(staff_api):
    """Finding: a start in 2020 with a future end went live at once, reporting an activation lag of
    218,324,784 s (enough to fire the activation-lag alert). Now 400 on ``starts_at``."""
    response = staff_api.post(
        "/api/promos",
        _payload(ProductFactory(), "2020-01-01T00:00:00Z", timezone.now() + timedelta(hours=1)),
        format="json",
    )

    assert list(_errors(response)) == ["starts_at"]
    assert not FlashPromo.objects.exists()


@pytest.mark.parametrize(
    ("starts_at", "ends_at", "fields"),
    [
        ("9999-01-01T00:00:00Z", "9999-01-02T00:00:00Z", {"starts_at", "ends_at"}),
        ("0001-01-01T00:00:00Z", "0001-01-02T00:00:00Z", {"starts_at"}),
        ("9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59Z", {"starts_at"}),
    ],
    ids=["year-9999", "year-1", "year-9999-past-the-last-instant-in-utc"],
)
def test_a_promo_in_year_9999_or_year_1_is_400(staff_api, starts_at, ends_at, fields):
    """Findings: years 9999 and 1 were accepted. Now 400: beyond the horizon, in the past, or past the last
    representable instant once converted to UTC."""
    response = staff_api.post("/api/promos", _payload(ProductFactory(), starts_at, ends_at), format="json")

    assert set(_errors(response)) == fields
    assert not FlashPromo.objects.exists()


def test_a_start_within_the_tolerance_in_the_past_is_accepted(staff_api):
    """A start a few seconds ago (a client's clock skew, the request's latency) is accepted and goes live at
    the next sweep; the tolerance is ``PROMO_START_PAST_TOLERANCE_SECONDS`` (60 s)."""
    now = timezone.now()

    response = staff_api.post(
        "/api/promos", _payload(ProductFactory(), now - timedelta(seconds=30), now + timedelta(hours=1)), format="json"
    )

    assert response.status_code == 201
    assert response.json()["status"] == "scheduled"


def test_the_past_tolerance_is_read_from_settings(staff_api, settings):
    """With ``PROMO_START_PAST_TOLERANCE_SECONDS = 0``, a start five seconds ago is refused."""
    settings.PROMO_START_PAST_TOLERANCE_SECONDS = 0
    now = timezone.now()

    response = staff_api.post(
        "/api/promos", _payload(ProductFactory(), now - timedelta(seconds=5), now + timedelta(hours=1)), format="json"
    )

    assert list(_errors(response)) == ["starts_at"]


@pytest.mark.parametrize(
    ("start_in", "duration", "fields"),
    [
        (timedelta(days=364), timedelta(hours=23), set()),
        (timedelta(days=366), timedelta(hours=1), {"starts_at", "ends_at"}),
        (timedelta(days=364, hours=23), timedelta(days=2), {"ends_at"}),
        (timedelta(days=1), timedelta(days=31), set()),
        (timedelta(days=1), timedelta(days=31, seconds=1), {"ends_at"}),
    ],
    ids=["ends-inside-the-horizon", "starts-past-the-horizon", "ends-past-the-horizon", "31-days", "over-31-days"],
)
def test_the_horizon_and_the_longest_duration(staff_api, start_in, duration, fields):
    """Both times at most ``PROMO_MAX_HORIZON_DAYS`` (365) ahead; a promo lasts at most
    ``PROMO_MAX_DURATION_DAYS`` (31): longer is a price change, or an end typed in the wrong month or year."""
    starts_at = timezone.now() + start_in

    response = staff_api.post("/api/promos", _payload(ProductFactory(), starts_at, starts_at + duration), format="json")

    if fields:
        assert set(_errors(response)) == fields
    else:
        assert response.status_code == 201, response.content


# --- Unknown fields are refused on every write ---------------------------------------------------------------


def test_a_promo_with_an_unknown_field_is_400_naming_it(staff_api):
    """Finding: ``"status": "active"`` was silently ignored (201, scheduled). Now 400 keyed by the field, its
    message listing the accepted ones; nothing is stored."""
    starts_at = timezone.now() + timedelta(hours=1)
    payload = _payload(ProductFactory(), starts_at, starts_at + timedelta(hours=1), status="active")

    response = staff_api.post("/api/promos", payload, format="json")

    assert list(_errors(response)) == ["status"]
    assert "product_id, title, discount_percent, starts_at, ends_at" in response.json()["status"][0]
    assert not FlashPromo.objects.exists()


def test_unknown_fields_are_reported_with_the_other_errors(staff_api):
    """An unknown field and an invalid one: both in one 400."""
    starts_at = timezone.now() + timedelta(hours=1)
    payload = _payload(ProductFactory(), starts_at, starts_at + timedelta(hours=1), discount_percent=0, ends="x")

    assert set(_errors(staff_api.post("/api/promos", payload, format="json"))) == {"discount_percent", "ends"}


def test_a_product_with_an_unknown_field_is_400_naming_it(staff_api):
    """Products too: ``stock`` is not a product field."""
    response = staff_api.post("/api/products", {"name": "Kettle", "price": "1.00", "stock": 3}, format="json")

    assert list(_errors(response)) == ["stock"]
    assert not Product.objects.exists()


def test_a_subscription_with_an_unknown_field_is_400_naming_it():
    """Subscriptions too (public): ``name`` is not taken."""
    product = ProductFactory()

    response = APIClient().post(
        f"/api/products/{product.pk}/subscriptions", {"email": "ann@example.com", "name": "Ann"}, format="json"
    )

    assert list(_errors(response)) == ["name"]
    assert not Subscription.objects.exists()


# --- Every error under /api/ is JSON ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/nope"),
        ("get", "/api/promos/abc"),
        ("get", "/api/promos/1.5"),
        ("get", "/api/promos/-1"),
        ("get", "/api/promos/"),
        ("post", "/api/products/kettle/subscriptions"),
        ("delete", "/api/promos/1/nope"),
        ("options", "/api/nope"),
        ("get", "/api/"),
    ],
    ids=[
        "unknown-name",
        "id-not-numeric",
        "id-decimal",
        "id-negative",
        "trailing-slash",
        "product-id-not-numeric",
        "unknown-action",
        "options",
        "api-root",
    ],
)
def test_unknown_api_paths_are_a_json_404(method, path):
    """Findings: unknown ``/api/`` paths and non-numeric ids answered Django's HTML 404 page. Now a JSON 404
    naming the path, whatever the method."""
    response = getattr(APIClient(), method)(path)

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": f"No API endpoint at {path}."}


def test_an_unknown_api_path_is_404_even_with_a_wrong_token():
    """The path is what is wrong: a bad token on it still gets the 404, not a 401."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer not-a-token")

    assert client.get("/api/nope").status_code == 404


@pytest.mark.parametrize(
    ("client", "method", "path", "status"),
    [
        ("anonymous", "put", "/api/promos", 405),
        ("staff_api", "delete", "/api/promos/{id}", 405),
        ("staff_api", "get", "/api/promos/{id}/cancel", 405),
        ("anonymous", "patch", "/api/promos/{id}", 401),
        ("anonymous", "post", "/api/promos/{id}/cancel", 401),
        ("shopper", "post", "/api/promos/{id}/cancel", 403),
        ("anonymous", "get", "/api/promos/{missing}", 404),
        ("anonymous", "get", "/api/promos?limit=0", 400),
    ],
)
def test_api_errors_have_a_json_body(request, client, method, path, status):
    """405, 401, 403, 404 and 400 from the API's views all answer ``application/json`` with a body (a method
    a write endpoint does not serve is 405 once the token is a staff one: DRF checks permissions first)."""
    promo = PromoFactory()
    api = APIClient() if client == "anonymous" else request.getfixturevalue(client)

    response = getattr(api, method)(path.format(id=promo.pk, missing=promo.pk + 1))

    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    assert response.json()


def test_a_refused_host_is_a_json_400_under_api_and_django_s_page_elsewhere(settings):
    """Outside DRF's views (here Django refusing the Host header), with ``DEBUG`` off as in production: JSON
    under ``/api/``, Django's HTML page for the admin."""
    settings.DEBUG = False
    client = Client(HTTP_HOST="evil.example")

    api = client.get("/api/promos")
    admin = client.get("/admin/")

    assert (api.status_code, api["Content-Type"], api.json()) == (400, "application/json", {"detail": "Bad request."})
    assert admin.status_code == 400
    assert admin["Content-Type"].startswith("text/html")


def test_non_api_paths_keep_django_s_404_page(settings):
    """An unknown path outside ``/api/`` still gets Django's HTML 404."""
    settings.DEBUG = False

    response = Client().get("/nope")

    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_an_unhandled_error_is_a_json_500_under_api_without_its_details(rf):
    """Django's 500 view (``handler500``, used with ``DEBUG`` off): JSON under ``/api/`` that tells nothing of
    the error (it is logged and sent to Sentry), Django's page elsewhere."""
    assert urls.handler500 == "marketplace.errors.server_error"

    api = errors.server_error(rf.get("/api/promos"))
    admin = errors.server_error(rf.get("/admin/"))

    assert (api.status_code, api["Content-Type"]) == (500, "application/json")
    assert api.content == b'{"detail": "Internal server error."}'
    assert admin.status_code == 500
    assert admin["Content-Type"].startswith("text/html")


# --- Moving a scheduled promo: PATCH /api/promos/{id} -----------------------------------------------------------


def test_staff_moves_a_scheduled_promo_and_its_countdowns_are_published_again(
    staff_api, django_capture_on_commit_callbacks
):
    """New times are stored, the countdown marks cleared (the old countdowns are for times that are gone),
    and one sweep is published after the commit to publish countdowns for the new ones."""
    promo = PromoFactory(activation_enqueued=True, end_enqueued=True)
    starts_at = (timezone.now() + timedelta(minutes=30)).replace(microsecond=0)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = staff_api.patch(
            f"/api/promos/{promo.pk}",
            {
                "title": "Moved",
                "starts_at": starts_at.isoformat(),
                "ends_at": (starts_at + timedelta(hours=2)).isoformat(),
            },
            format="json",
        )

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["title"], body["status"]) == ("Moved", "scheduled")
    assert datetime.fromisoformat(body["starts_at"]) == starts_at
    promo.refresh_from_db()
    assert (promo.title, promo.starts_at, promo.ends_at) == ("Moved", starts_at, starts_at + timedelta(hours=2))
    assert not promo.activation_enqueued and not promo.end_enqueued
    assert callbacks == [tasks.publish_sweep]


def test_changing_only_the_title_keeps_the_countdowns(staff_api, django_capture_on_commit_callbacks):
    """A new title alone leaves the times and their countdowns as they are: no sweep is published."""
    promo = PromoFactory(activation_enqueued=True)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = staff_api.patch(f"/api/promos/{promo.pk}", {"title": "Renamed"}, format="json")

    assert response.status_code == 200
    promo.refresh_from_db()
    assert (promo.title, promo.activation_enqueued) == ("Renamed", True)
    assert callbacks == []


def test_moving_only_the_end_is_checked_against_the_current_start(staff_api):
    """An end alone is checked with the start the promo has: before it is 400 on ``ends_at``."""
    promo = PromoFactory()

    response = staff_api.patch(
        f"/api/promos/{promo.pk}", {"ends_at": (promo.starts_at - timedelta(minutes=1)).isoformat()}, format="json"
    )

    assert list(_errors(response)) == ["ends_at"]
    promo.refresh_from_db()
    assert promo.ends_at > promo.starts_at


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"starts_at": "2020-01-01T00:00:00Z"}, {"starts_at"}),
        ({"ends_at": "9999-01-01T00:00:00Z"}, {"ends_at"}),
        ({"starts_at": "2030-01-01T00:00:00"}, {"starts_at"}),
        ({"discount_percent": 10}, {"discount_percent"}),
        ({"status": "active"}, {"status"}),
        ({"title": ""}, {"title"}),
    ],
    ids=["start-in-the-past", "end-in-year-9999", "start-without-an-offset", "discount", "status", "blank-title"],
)
def test_an_invalid_change_is_400_and_changes_nothing(staff_api, changes, fields):
    """The same rules as creating; fields that cannot be changed (the discount, the status) are refused by
    name."""
    promo = PromoFactory()
    before = FlashPromo.objects.values().get(pk=promo.pk)

    response = staff_api.patch(f"/api/promos/{promo.pk}", changes, format="json")

    assert set(_errors(response)) == fields
    assert FlashPromo.objects.values().get(pk=promo.pk) == before


@pytest.mark.parametrize("status", ["active", "ended", "cancelled"])
def test_a_promo_no_longer_scheduled_cannot_be_changed_409(staff_api, status):
    """Once live, ended or cancelled a promo's times are history: 409 says which status it is in."""
    promo = PromoFactory(status=status, starts_at=timezone.now() - timedelta(minutes=5))
    before = FlashPromo.objects.values().get(pk=promo.pk)

    response = staff_api.patch(f"/api/promos/{promo.pk}", {"title": "Too late"}, format="json")

    assert response.status_code == 409
    assert response.json() == {
        "detail": f"Promo {promo.pk} is {status}: only a scheduled promo can be changed.",
        "status": status,
    }
    assert FlashPromo.objects.values().get(pk=promo.pk) == before


def test_changing_an_unknown_promo_is_404(staff_api):
    response = staff_api.patch(f"/api/promos/{PromoFactory().pk + 1}", {"title": "x"}, format="json")

    assert (response.status_code, response.json()) == (404, {"detail": "No promo with this id."})


def test_only_staff_may_change_a_promo(shopper):
    """Writes keep their permission: a non-staff_api token gets 403 and nothing changes."""
    promo = PromoFactory()

    response = shopper.patch(f"/api/promos/{promo.pk}", {"title": "Mine"}, format="json")

    assert response.status_code == 403
    assert FlashPromo.objects.get(pk=promo.pk).title == promo.title


# --- Cancelling: POST /api/promos/{id}/cancel ---------------------------------------------------------------------


@pytest.mark.parametrize("status", ["scheduled", "active"])
def test_staff_cancels_a_scheduled_or_active_promo(staff_api, status):
    """The promo is ``cancelled`` with ``ended_at`` set (the retention cleanup counts from it), answered with
    the promo; ``promo.cancelled`` is logged with the status it had."""
    promo = PromoFactory(status=status)

    with capture_logs() as logs:
        response = staff_api.post(f"/api/promos/{promo.pk}/cancel", format="json")

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "cancelled"
    promo.refresh_from_db()
    assert promo.status == PromoStatus.CANCELLED and promo.ended_at is not None
    assert [entry for entry in logs if entry["event"] == "promo.cancelled"] == [
        {"event": "promo.cancelled", "promo_id": promo.pk, "previous_status": status, "log_level": "info"}
    ]


def test_cancelling_again_answers_200_and_changes_nothing(staff_api):
    """A retried cancel (the first answer lost) succeeds again; the first cancellation's time stays."""
    promo = PromoFactory()
    staff_api.post(f"/api/promos/{promo.pk}/cancel")
    first_ended_at = FlashPromo.objects.get(pk=promo.pk).ended_at

    with capture_logs() as logs:
        response = staff_api.post(f"/api/promos/{promo.pk}/cancel")

    assert (response.status_code, response.json()["status"]) == (200, "cancelled")
    assert FlashPromo.objects.get(pk=promo.pk).ended_at == first_ended_at
    assert not [entry for entry in logs if entry["event"] == "promo.cancelled"]


def test_an_ended_promo_cannot_be_cancelled_409(staff_api):
    earlier = timezone.now() - timedelta(hours=2)
    promo = PromoFactory(status="ended", starts_at=earlier, ends_at=earlier + timedelta(hours=1))

    response = staff_api.post(f"/api/promos/{promo.pk}/cancel")

    assert response.status_code == 409
    assert response.json()["status"] == "ended"
    assert FlashPromo.objects.get(pk=promo.pk).status == PromoStatus.ENDED


def test_cancelling_refuses_a_body_404s_an_unknown_promo_and_needs_staff(staff_api, shopper):
    promo = PromoFactory()

    assert list(_errors(staff_api.post(f"/api/promos/{promo.pk}/cancel", {"reason": "x"}, format="json"))) == ["reason"]
    assert staff_api.post(f"/api/promos/{promo.pk + 1}/cancel").status_code == 404
    assert shopper.post(f"/api/promos/{promo.pk}/cancel").status_code == 403
    assert FlashPromo.objects.get(pk=promo.pk).status == PromoStatus.SCHEDULED


def test_a_cancelled_active_promo_gets_no_fan_out_and_its_pending_notifications_are_not_claimed(staff_api):
    """Cancelled after going live: a fan-out that runs late queues nothing, and pending rows are not claimed."""
    product = ProductFactory()
    promo = PromoFactory(product=product, status="active", starts_at=timezone.now() - timedelta(minutes=1))
    subscriptions = SubscriptionFactory.create_batch(2, product=product)
    Notification.objects.create(promo=promo, subscription=subscriptions[0], next_attempt_at=timezone.now())

    assert staff_api.post(f"/api/promos/{promo.pk}/cancel").status_code == 200

    assert fanout.promo_fan_out_batch(promo_id=promo.pk, now=timezone.now()).skipped == "stopped"
    assert notifications.notifications_deliver_batch(now=timezone.now()).claimed == 0
    assert Notification.objects.get().status == "pending"  # the queue sweep marks it failed


def test_promo_cancel_reports_whether_it_cancelled():
    """The service: True when this call cancelled, False when it already was; ended is a conflict."""
    promo = PromoFactory()
    now = timezone.now()

    assert services.promo_cancel(promo_id=promo.pk, now=now) is True
    assert services.promo_cancel(promo_id=promo.pk, now=now) is False
    ended = PromoFactory(status="ended")
    with pytest.raises(services.PromoConflictError):
        services.promo_cancel(promo_id=ended.pk, now=now)
    with pytest.raises(FlashPromo.DoesNotExist):
        services.promo_cancel(promo_id=ended.pk + 1, now=now)
