"""The admin's promo form: staff edit what a promo is, never the flags the sweep and the fan-out own."""

from __future__ import annotations

import pytest
from django.contrib.admin.sites import site

from promotions.models import FlashPromo

pytestmark = pytest.mark.django_db


def test_the_promo_form_offers_none_of_the_machine_owned_fields(rf, admin_user):
    request = rf.get("/admin/promotions/flashpromo/add/")
    request.user = admin_user
    form = site._registry[FlashPromo].get_form(request)

    # Not status, activated_at, ended_at, the countdown flags or notifications_queued: ticked by hand, the last
    # would stop a promo's notifications for good.
    assert set(form.base_fields) == {"product", "title", "discount_percent", "starts_at", "ends_at"}
