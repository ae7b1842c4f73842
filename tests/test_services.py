"""Promo state services: set-based, idempotent, constant statement count."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from promotions import services
from promotions.models import FlashPromo, Notification, PromoStatus
from tests.factories import ProductFactory, PromoFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


def _due_promos(count: int, *, subscribers: int = 2) -> list[FlashPromo]:
    now = timezone.now()
    product = ProductFactory()
    SubscriptionFactory.create_batch(subscribers, product=product)
    return PromoFactory.create_batch(
        count, product=product, starts_at=now - timedelta(seconds=5), ends_at=now + timedelta(hours=1)
    )


def test_sync_activates_due_promos_and_fans_out_one_notification_per_subscriber():
    """Given due promos with subscribers, one sweep activates them, records the lag and queues notifications."""
    promos = _due_promos(3, subscribers=4)
    not_due = PromoFactory()

    result = services.promos_sync_state(now=timezone.now())

    assert sorted(result.activated) == sorted(p.pk for p in promos)
    assert result.notifications_queued == 12
    assert Notification.objects.filter(status="pending").count() == 12
    for promo in FlashPromo.objects.filter(pk__in=result.activated):
        assert promo.status == PromoStatus.ACTIVE
        assert promo.activated_at is not None and promo.activated_at >= promo.starts_at
    assert all(lag >= 5 for lag in result.activation_lags_seconds)
    not_due.refresh_from_db()
    assert not_due.status == PromoStatus.SCHEDULED


def test_sync_twice_changes_nothing_more_than_once():
    """Running the sweep again finds nothing to do: no second activation, no duplicate notification."""
    _due_promos(2)
    first = services.promos_sync_state(now=timezone.now())
    second = services.promos_sync_state(now=timezone.now())

    assert first.summary()["activated"] == 2
    assert second.summary() == {"activated": 0, "ended": 0, "skipped": 0, "notifications_queued": 0}
    assert Notification.objects.count() == 4


def test_sync_ends_finished_promos_and_skips_those_whose_window_passed():
    """Active promos past their end end; scheduled ones whose window closed never go live or notify."""
    now = timezone.now()
    product = ProductFactory()
    SubscriptionFactory(product=product)
    finished = PromoFactory(
        product=product,
        status="active",
        starts_at=now - timedelta(hours=2),
        ends_at=now - timedelta(minutes=1),
    )
    missed = PromoFactory(product=product, starts_at=now - timedelta(hours=2), ends_at=now - timedelta(hours=1))

    result = services.promos_sync_state(now=now)

    assert result.ended == [finished.pk]
    assert result.skipped == [missed.pk]
    missed.refresh_from_db()
    assert (missed.status, missed.activated_at) == (PromoStatus.ENDED, None)
    assert not Notification.objects.exists()


@pytest.mark.parametrize("count", [1, 50])
def test_sync_runs_a_constant_number_of_statements(count):
    """The sweep's statement count does not depend on how many promos are due."""
    _due_promos(count)
    with CaptureQueriesContext(connection) as queries:
        services.promos_sync_state(now=timezone.now())
    statements = [q["sql"] for q in queries.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]
    assert len(statements) == 3  # activate, end, fan out


def test_upcoming_transitions_are_claimed_once():
    """Starts and ends within the horizon are returned once; later sweeps do not publish them again."""
    now = timezone.now()
    soon = PromoFactory(starts_at=now + timedelta(seconds=30), ends_at=now + timedelta(seconds=80))
    PromoFactory(starts_at=now + timedelta(minutes=10))

    first = services.promos_claim_upcoming_transitions(now=now)
    second = services.promos_claim_upcoming_transitions(now=now)

    assert {(t.promo_id, t.due_at) for t in first} == {(soon.pk, soon.starts_at), (soon.pk, soon.ends_at)}
    assert second == []


def test_cleanup_deletes_only_promos_finished_before_retention_in_batches(settings):
    """Old finished promos go with their notifications, in bounded statements; recent ones stay."""
    settings.PROMO_CLEANUP_BATCH_SIZE = 3
    now = timezone.now()
    old = now - timedelta(days=settings.PROMO_RETENTION_DAYS + 1)
    product = ProductFactory()
    SubscriptionFactory.create_batch(4, product=product)
    expired = PromoFactory.create_batch(
        2, product=product, status="ended", starts_at=old - timedelta(hours=1), ends_at=old, ended_at=old
    )
    for promo in expired:
        Notification.objects.bulk_create(
            Notification(promo=promo, subscription=s, next_attempt_at=now) for s in product.subscriptions.all()
        )
    recent = PromoFactory(product=product, status="ended", ended_at=now - timedelta(days=1))

    totals = services.promos_cleanup_finished(now=now)

    assert totals["promos_deleted"] == 2
    assert totals["notifications_deleted"] == 8
    assert totals["batches"] >= 4  # 8 notifications in batches of 3, then the promos
    assert list(FlashPromo.objects.values_list("pk", flat=True)) == [recent.pk]
