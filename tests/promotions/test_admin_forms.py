"""The admin's promo form and actions: staff edit what a promo is, never the flags the sweep and the fan-out own;
cancelling goes through the same service as the API's. Subscriptions show their consent, which staff cannot set."""

from __future__ import annotations

import pytest
from django.contrib.admin.sites import site

from promotions.models import FlashPromo, PromoStatus, Subscription
from tests.factories import PromoFactory, SubscriptionFactory

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


def test_the_subscription_list_shows_consent_and_its_form_cannot_grant_it(client, admin_user, rf):
    """The subscription list shows whether each is notified and filters by consent; the form offers no consent
    field (it is the address's to give, through its link)."""
    confirmed = SubscriptionFactory(email="yes@example.com")
    SubscriptionFactory(email="waiting@example.com", unconfirmed=True)
    client.force_login(admin_user)

    everything = client.get("/admin/promotions/subscription/")
    notified = client.get("/admin/promotions/subscription/", {"consent": "confirmed"})

    assert everything.status_code == notified.status_code == 200
    assert b"waiting@example.com" in everything.content and b"waiting@example.com" not in notified.content
    assert b"yes@example.com" in notified.content
    request = rf.get(f"/admin/promotions/subscription/{confirmed.pk}/change/")
    request.user = admin_user
    assert set(site._registry[Subscription].get_form(request, confirmed).base_fields) == {"product", "email"}


def test_the_confirmation_request_action_asks_only_unconfirmed_subscriptions(
    client, admin_user, django_capture_on_commit_callbacks
):
    """The admin action publishes one confirmation request per unconfirmed subscription selected, none for a
    confirmed one."""
    waiting = SubscriptionFactory(unconfirmed=True)
    confirmed = SubscriptionFactory()
    client.force_login(admin_user)

    with django_capture_on_commit_callbacks(execute=False) as published:
        response = client.post(
            "/admin/promotions/subscription/",
            {"action": "request_confirmation", "_selected_action": [waiting.pk, confirmed.pk]},
            follow=True,
        )

    assert response.status_code == 200
    assert len(published) == 1
    assert Subscription.objects.get(pk=waiting.pk).confirmation_sent_at is not None
