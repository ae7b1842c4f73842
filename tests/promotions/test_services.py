"""Promo state services: set-based, idempotent, constant statement count."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from promotions import services
from promotions.models import FlashPromo, Notification, PromoStatus
from tests.conftest import wait_for
from tests.factories import ProductFactory, PromoFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


def _due_promos(count: int, *, subscribers: int = 2) -> list[FlashPromo]:
    now = timezone.now()
    product = ProductFactory()
    SubscriptionFactory.create_batch(subscribers, product=product)
    return PromoFactory.create_batch(
        count, product=product, starts_at=now - timedelta(seconds=5), ends_at=now + timedelta(hours=1)
    )


def test_sync_activates_due_promos_and_records_their_lag():
    """Given due promos, one sweep activates them and records the lag; it writes no notification itself."""
    promos = _due_promos(3, subscribers=4)
    not_due = PromoFactory()

    result = services.promos_sync_state(now=timezone.now())

    assert sorted(result.activated) == sorted(p.pk for p in promos)
    for promo in FlashPromo.objects.filter(pk__in=result.activated):
        assert promo.status == PromoStatus.ACTIVE and not promo.notifications_queued
        assert promo.activated_at is not None and promo.activated_at >= promo.starts_at
    assert all(lag >= 5 for lag in result.activation_lags_seconds)
    assert not Notification.objects.exists()
    not_due.refresh_from_db()
    assert not_due.status == PromoStatus.SCHEDULED


def test_sync_twice_changes_nothing_more_than_once():
    """Running the sweep again finds nothing to do: no second activation."""
    _due_promos(2)
    first = services.promos_sync_state(now=timezone.now())
    second = services.promos_sync_state(now=timezone.now())

    assert first.summary()["activated"] == 2
    assert second.summary() == {"activated": 0, "ended": 0, "skipped": 0}


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
    assert len(statements) == 2  # activate, end


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
    settings.PROMO_CLEANUP_NOTIFICATION_BATCH_SIZE = 3
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


def test_a_cleanup_run_stops_at_its_time_budget_and_the_next_goes_on(settings):
    """With its time budget used up, a run stops after the statement under way (one here, as every run makes
    progress); the next run goes on where it stopped."""
    settings.PROMO_CLEANUP_TIME_BUDGET_SECONDS = 0
    now = timezone.now()
    old = now - timedelta(days=settings.PROMO_RETENTION_DAYS + 1)
    product = ProductFactory()
    promo = PromoFactory(product=product, status="ended", starts_at=old - timedelta(hours=1), ends_at=old, ended_at=old)
    Notification.objects.bulk_create(
        Notification(promo=promo, subscription=s, next_attempt_at=now)
        for s in SubscriptionFactory.create_batch(3, product=product)
    )

    first = services.promos_cleanup_finished(now=now)
    second = services.promos_cleanup_finished(now=now)

    assert (first["batches"], first["notifications_deleted"], first["promos_deleted"]) == (1, 3, 0)
    assert (second["batches"], second["notifications_deleted"], second["promos_deleted"]) == (1, 0, 1)
    assert not FlashPromo.objects.exists()


def _wait_for_a_lock_wait() -> None:
    """Until another session of the test database waits on a lock (here: the promo's row)."""
    with connection.cursor() as cursor:

        def waiting() -> bool:
            cursor.execute("SELECT pg_stat_clear_snapshot()")  # else one snapshot for the whole transaction
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return bool(cursor.fetchone()[0])

        wait_for(waiting, timeout=10, what="a session waiting on the promo's row lock")


@pytest.mark.django_db(transaction=True)
def test_a_sweep_racing_a_move_never_activates_the_promo_on_its_old_start():
    """While ``promo_update`` holds a promo moved an hour later (uncommitted), a sweep for a time past its old
    start waits on the row, then reads the committed new start and leaves the promo scheduled."""
    now = timezone.now()
    promo = PromoFactory(starts_at=now + timedelta(seconds=10), ends_at=now + timedelta(minutes=10))
    sweeps: list[services.PromoSyncResult] = []

    def sweep() -> None:
        sweeps.append(services.promos_sync_state(now=now + timedelta(seconds=20)))
        connection.close()

    sweeper = threading.Thread(target=sweep)
    with transaction.atomic():
        services.promo_update(
            promo_id=promo.pk, now=now, starts_at=now + timedelta(hours=1), ends_at=now + timedelta(hours=2)
        )
        sweeper.start()
        _wait_for_a_lock_wait()
    sweeper.join(10)

    assert sweeps[0].activated == []
    promo.refresh_from_db()
    assert (promo.status, promo.starts_at) == (PromoStatus.SCHEDULED, now + timedelta(hours=1))


@pytest.mark.django_db(transaction=True)
def test_a_cancel_racing_the_sweep_cancels_what_the_sweep_committed():
    """While a sweep activates a promo (uncommitted), ``promo_cancel`` waits on the row, then cancels the
    now-active promo: neither write is lost."""
    now = timezone.now()
    promo = PromoFactory(starts_at=now - timedelta(seconds=1), ends_at=now + timedelta(minutes=10))
    cancelled: list[bool] = []

    def cancel() -> None:
        cancelled.append(services.promo_cancel(promo_id=promo.pk, now=now))
        connection.close()

    canceller = threading.Thread(target=cancel)
    with transaction.atomic():
        assert services.promos_sync_state(now=now).activated == [promo.pk]
        canceller.start()
        _wait_for_a_lock_wait()
    canceller.join(10)

    assert cancelled == [True]
    promo.refresh_from_db()
    assert (promo.status, promo.activated_at) == (PromoStatus.CANCELLED, now)
