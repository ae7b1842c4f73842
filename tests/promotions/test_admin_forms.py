"""The admin's promo form and actions: staff edit what a promo is, never the flags the sweep and the fan-out own;
cancelling goes through the same service as the API's."""

from __future__ import annotations

import pytest
from django.contrib.admin.sites import site

from promotions.models import FlashPromo, PromoStatus
from tests.factories import PromoFactory

pytestmark = pytest.mark.django_db


def test_the_promo_form_offers_none_of_the_machine_owned_fields(rf, admin_user):
    request = rf.get("/admin/promotions/flashpromo/add/")
    request.user = admin_user
    form = site._registry[FlashPromo].get_form(request)

    # Not status, activated_at, ended_at, the countdown flags or notifications_queued: ticked by hand, the last
    # would stop a promo's notifications for good.
    assert set(form.base_fields) == {"product", "title", "discount_percent", "starts_at", "ends_at"}


def test_the_cancel_action_cancels_through_the_service_and_leaves_ended_promos(client, admin_user, caplog):
    """Scheduled and active promos become cancelled, each logged ``promo.cancelled`` as the API's cancel logs
    it; an ended promo stays ended."""
    scheduled, active, ended = PromoFactory(), PromoFactory(), PromoFactory()
    FlashPromo.objects.filter(pk=active.pk).update(status=PromoStatus.ACTIVE)
    FlashPromo.objects.filter(pk=ended.pk).update(status=PromoStatus.ENDED)
    client.force_login(admin_user)

    response = client.post(
        "/admin/promotions/flashpromo/",
        {"action": "cancel", "_selected_action": [scheduled.pk, active.pk, ended.pk]},
        follow=True,
    )

    assert response.status_code == 200
    statuses = dict(FlashPromo.objects.values_list("pk", "status"))
    assert statuses == {scheduled.pk: "cancelled", active.pk: "cancelled", ended.pk: "ended"}
    assert caplog.text.count("promo.cancelled") == 2
