"""Issue 21's least privilege in the API: writes need the model permission the admin asks for, not only
``is_staff`` (403 naming it); the public sees active promos without counts, staff with ``view_flashpromo`` see
everything. Each test is the probe's request or its equivalent, and failed before the change."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from promotions.models import FlashPromo, Product, PromoStatus
from tests.factories import API_PERMISSIONS, ProductFactory, PromoFactory, grant, promo_api_body

pytestmark = pytest.mark.django_db


@pytest.fixture
def bare_staff(django_user_model) -> APIClient:
    """The probe's user: staff, without any model permission (the admin refuses them everywhere)."""
    user = django_user_model.objects.create_user(username="bare", password="x", is_staff=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {AuthToken.objects.create(user=user)[1]}")
    return client


def test_staff_without_the_permission_cannot_create_products_or_promos(bare_staff):
    """Given a staff user without model permissions (the probe's), when they create a product and a promo
    through the API, then both are 403 naming the permission missing, and nothing is created."""
    product = ProductFactory()

    product_response = bare_staff.post("/api/products", {"name": "Kettle", "price": "19.90"}, format="json")
    promo_response = bare_staff.post("/api/promos", promo_api_body(product), format="json")

    assert product_response.status_code == 403
    assert "promotions.add_product" in product_response.json()["detail"]
    assert promo_response.status_code == 403
    assert "promotions.add_flashpromo" in promo_response.json()["detail"]
    assert Product.objects.count() == 1
    assert not FlashPromo.objects.exists()


def test_staff_without_the_change_permission_cannot_move_or_cancel_a_promo(bare_staff):
    """Given a scheduled promo, when a staff user without ``change_flashpromo`` moves or cancels it, then 403
    and the promo is unchanged."""
    promo = PromoFactory(starts_at=timezone.now() + timedelta(hours=1), ends_at=timezone.now() + timedelta(hours=2))
    title = promo.title

    patch = bare_staff.patch(f"/api/promos/{promo.pk}", {"title": "Changed"}, format="json")
    cancel = bare_staff.post(f"/api/promos/{promo.pk}/cancel")

    assert (patch.status_code, cancel.status_code) == (403, 403)
    assert "promotions.change_flashpromo" in cancel.json()["detail"]
    promo.refresh_from_db()
    assert (promo.title, promo.status) == (title, "scheduled")


def test_each_write_needs_its_own_permission(django_user_model):
    """Given staff holding only ``add_flashpromo``, when they create a promo and then cancel it, then the
    create is 201 (answered with the whole promo) and the cancel 403."""
    user = django_user_model.objects.create_user(username="creator", password="x", is_staff=True)
    grant(user, "add_flashpromo")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {AuthToken.objects.create(user=user)[1]}")

    created = client.post("/api/promos", promo_api_body(ProductFactory()), format="json")
    cancel = client.post(f"/api/promos/{created.json()['id']}/cancel")

    assert created.status_code == 201
    assert "notifications" in created.json()
    assert cancel.status_code == 403


@pytest.fixture
def promos_of_every_status():
    now = timezone.now()
    product = ProductFactory()
    promos = {}
    for offset, status in enumerate(PromoStatus.values):
        starts_at = now + timedelta(minutes=offset - 2)
        promos[status] = PromoFactory(
            product=product, status=status, starts_at=starts_at, ends_at=starts_at + timedelta(hours=1)
        )
    return promos


def test_anonymous_callers_see_only_active_promos_without_counts(promos_of_every_status):
    """Given a promo of each status, when anyone without a token lists promos (even filtering on a status),
    then only the active promo comes back, with no notification counts, lag or delivery times; the others
    are 404 by id, as a promo that does not exist."""
    anonymous = APIClient()

    listed = anonymous.get("/api/promos").json()
    scheduled = anonymous.get("/api/promos", {"status": "scheduled"}).json()
    active = promos_of_every_status["active"]
    detail = anonymous.get(f"/api/promos/{active.pk}")
    hidden = {
        status: anonymous.get(f"/api/promos/{promo.pk}").status_code
        for status, promo in promos_of_every_status.items()
        if status != "active"
    }

    assert [item["id"] for item in listed] == [active.pk]
    assert scheduled == []
    assert set(listed[0]) == {"id", "product_id", "title", "discount_percent", "status", "starts_at", "ends_at"}
    assert detail.status_code == 200
    assert "notifications" not in detail.json()
    assert hidden == {"scheduled": 404, "ended": 404, "cancelled": 404}


def test_staff_with_the_view_permission_see_every_promo_with_counts(promos_of_every_status, staff_api, bare_staff):
    """Given a promo of each status, when staff with ``view_flashpromo`` list them, then all four come back
    with counts; a staff user without it sees what the public sees."""
    everything = staff_api.get("/api/promos").json()
    public = bare_staff.get("/api/promos").json()

    assert {item["status"] for item in everything} == set(PromoStatus.values)
    assert all("notifications" in item for item in everything)
    assert [item["id"] for item in public] == [promos_of_every_status["active"].pk]


def test_the_staff_api_fixture_holds_every_api_permission(staff_api):
    """The shared fixture other tests write through holds exactly the API's permissions."""
    assert set(API_PERMISSIONS) == {"add_product", "add_flashpromo", "change_flashpromo", "view_flashpromo"}
    assert staff_api.post("/api/products", {"name": "Kettle", "price": "1.00"}, format="json").status_code == 201
