"""Celery tasks of the promotions domain: thin adapters from messages to services.

Tasks publish follow-up work (countdown transitions, delivery batches) and return small JSON summaries;
failure handling belongs to ``observability.tasks.ObservableTask``, the app's base task.
"""

from __future__ import annotations

import math
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from observability import telemetry
from observability.tasks import ObservableTask
from promotions import notifications, selectors, services
from promotions.services import PromoSyncResult

__all__ = [
    "check_active_promos",
    "cleanup_expired_promos",
    "deliver_notification_batch",
    "process_notification_queue",
    "schedule_promptly",
    "sync_promo",
]

#: Cap on delivery batches one sweep publishes; the next sweep publishes more if the backlog remains.
MAX_BATCHES_PER_SWEEP = 1000


@shared_task(base=ObservableTask, singleton=True)
def check_active_promos() -> dict[str, int]:
    """Activate due promos, end finished ones, and publish a countdown task for each transition due
    before the next sweep, so promos go live on time rather than on the next minute."""
    now = timezone.now()
    result = services.promos_sync_state(now=now)
    _after_sync(result)
    transitions = services.promos_claim_upcoming_transitions(now=now)
    for transition in transitions:
        sync_promo.apply_async((transition.promo_id,), eta=transition.due_at)
    return {**result.summary(), "countdowns_scheduled": len(transitions)}


@shared_task
def sync_promo(promo_id: int) -> dict[str, int]:
    """Apply the due transition of one promo at its exact time (published by ``check_active_promos``).

    A run that comes early (clock skew between hosts) publishes itself again for the promo's start time.
    """
    now = timezone.now()
    result = services.promos_sync_state(now=now, promo_id=promo_id)
    _after_sync(result)
    starts_at = selectors.promo_pending_start(promo_id=promo_id)
    horizon = timedelta(seconds=settings.PROMO_TRANSITION_HORIZON_SECONDS)
    if starts_at is not None and now < starts_at <= now + horizon:
        sync_promo.apply_async((promo_id,), eta=starts_at)  # further off (start moved later): the sweep has it
    return result.summary()


@shared_task(base=ObservableTask, singleton=True)
def process_notification_queue() -> dict[str, int]:
    """Safety net for deliveries: reclaim rows of dead workers and publish batches for what is due."""
    now = timezone.now()
    reclaimed = notifications.notifications_reclaim_expired(now=now)
    notifications.notifications_fail_for_inactive_promos(now=now)
    due = selectors.notifications_count_due(now=now, limit=MAX_BATCHES_PER_SWEEP * settings.NOTIFICATION_BATCH_SIZE)
    return {"reclaimed": reclaimed, "due": due, "batches_published": _publish_batches(due)}


@shared_task
def deliver_notification_batch() -> dict[str, int]:
    """Deliver one batch of due notifications (claimed with SKIP LOCKED, so batches run side by side)."""
    result = notifications.notifications_deliver_batch(now=timezone.now())
    telemetry.notifications_delivered(channel=settings.NOTIFICATION_BACKEND, sent=result.sent, failed=result.failed)
    return result.summary()


@shared_task(base=ObservableTask, singleton=True)
def cleanup_expired_promos() -> dict[str, int]:
    """Delete promos finished longer than the retention period ago, in bounded batches."""
    return services.promos_cleanup_finished(now=timezone.now())


def schedule_promptly() -> None:
    """After a transaction that created or moved promos commits, run a sweep at once: it publishes the
    countdown of any promo starting within the minute, which the next beat tick could make up to 60 s late.
    With the broker down the commit stands and the next beat tick catches up (hence ``robust``)."""
    transaction.on_commit(check_active_promos.delay, robust=True)


def _after_sync(result: PromoSyncResult) -> None:
    telemetry.promos_synced(result.activation_lags_seconds, ended=len(result.ended) + len(result.skipped))
    # Delivery starts at once; the 30 s queue sweep only catches stragglers and retries.
    _publish_batches(result.notifications_queued)


def _publish_batches(count: int) -> int:
    batches = min(math.ceil(count / settings.NOTIFICATION_BATCH_SIZE), MAX_BATCHES_PER_SWEEP)
    for _ in range(batches):
        deliver_notification_batch.delay()
    return batches
