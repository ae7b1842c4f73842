"""Celery tasks of the promotions domain: thin adapters from messages to services.

Tasks publish follow-up work (countdown transitions, notification fan-outs, delivery batches) and return small
JSON summaries; failure handling belongs to ``observability.task.ObservableTask``, the app's base task.

Only the periodic tasks store their summaries (the seed's shell recipe reads ``check_active_promos.delay().get()``);
the tasks they publish - countdowns, fan-outs, up to 1000 delivery batches a sweep - do not (``ignore_result``):
nothing reads them, and each was a Redis key kept a day. A caller that wants one asks for it:
``apply_async(ignore_result=False)``.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import structlog
from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError

from observability import telemetry
from observability.task import ObservableTask
from promotions import consent, fanout, notifications, selectors, services
from promotions.services import PromoSyncResult

__all__ = [
    "check_active_promos",
    "cleanup_expired_promos",
    "deliver_notification_batch",
    "process_notification_queue",
    "publish_sweep",
    "queue_promo_notifications",
    "request_confirmation",
    "schedule_promptly",
    "send_subscription_confirmation",
    "sync_promo",
]

log = structlog.get_logger(__name__)

#: Cap on delivery batches one sweep publishes; the next sweep publishes more if the backlog remains.
MAX_BATCHES_PER_SWEEP = 1000
#: Promos per fan-out task: 10,000 promos going live at once become 100 tasks that workers run side by side.
FAN_OUT_CHUNK = 100
#: An active promo whose fan-out made no progress this long (no batch committed since, or since its activation)
#: lost its fan-out task (a crash between a commit and the publish, a worker killed mid-walk): the sweep publishes
#: it again, and the walk resumes at its cursor. Normally a batch commits every fraction of a second; behind a
#: longer backlog the sweep publishes a duplicate, which takes the promo's batches in turn with the first.
FAN_OUT_RECOVERY_AFTER = timedelta(minutes=2)
#: Cap on promos the sweep re-fans out per run.
MAX_FAN_OUT_RECOVERIES = 10 * FAN_OUT_CHUNK


@shared_task(base=ObservableTask, singleton=True)
def check_active_promos() -> dict[str, int]:
    """Activate due promos, end finished ones, and publish a countdown task for each transition due
    before the next sweep, so promos go live on time rather than on the next minute. Also publishes the
    fan-out again for promos whose notifications were never queued."""
    now = timezone.now()
    result = services.promos_sync_state(now=now)
    fan_outs = _after_sync(result)
    stalled = selectors.promos_awaiting_fan_out(idle_since=now - FAN_OUT_RECOVERY_AFTER, limit=MAX_FAN_OUT_RECOVERIES)
    fan_outs += _publish_fan_outs(stalled)
    transitions = services.promos_claim_upcoming_transitions(now=now)
    for transition in transitions:
        _publish_countdown(transition.promo_id, transition.due_at)
    return {**result.summary(), "fan_outs_published": fan_outs, "countdowns_scheduled": len(transitions)}


@shared_task(ignore_result=True)
def sync_promo(promo_id: int, due_at: str | None = None) -> dict[str, int]:
    """Apply the due transition of one promo at its exact time (published by ``check_active_promos``).

    ``due_at`` is the ISO 8601 time the countdown was published for: once the promo's times have moved
    (``services.promo_update``), it matches neither and the run does nothing - the sweep publishes countdowns
    for the new times. A run without it (published before it existed) syncs whatever is due. A run that comes
    early (clock skew between hosts) publishes itself again for the promo's start time.
    """
    now = timezone.now()
    due = datetime.fromisoformat(due_at) if due_at is not None else None
    result = services.promos_sync_state(now=now, promo_id=promo_id, due_at=due)
    log.info("promo.countdown_ran", promo_id=promo_id, due_at=due_at, **result.summary())
    fan_outs = _after_sync(result)
    starts_at = selectors.promo_pending_start(promo_id=promo_id)
    horizon = timedelta(seconds=settings.PROMO_TRANSITION_HORIZON_SECONDS)
    republished = 0
    if starts_at is not None and due in (None, starts_at) and now < starts_at <= now + horizon:
        # Further off (start moved later): the sweep has it.
        _publish_countdown(promo_id, starts_at)
        republished = 1
    return {**result.summary(), "fan_outs_published": fan_outs, "countdowns_scheduled": republished}


def _publish_countdown(promo_id: int, due_at: datetime) -> None:
    # With the ``promo.countdown_ran`` line of its run, this one follows a countdown from its publish to its run
    # whichever broker holds it in between (Redis: a worker's memory; RabbitMQ: the delayed-delivery queues).
    sync_promo.apply_async((promo_id, due_at.isoformat()), eta=due_at)
    log.info("promo.countdown_published", promo_id=promo_id, due_at=due_at.isoformat())


@shared_task(ignore_result=True)
def queue_promo_notifications(promo_ids: list[int]) -> dict[str, int]:
    """Queue the notifications of promos that just went live, a keyset batch at a time, and publish each batch's
    deliveries as it commits, so the first subscribers are told while the rest are still being queued.

    After ``NOTIFICATION_FAN_OUT_TASK_SECONDS`` the task publishes itself again with the promos not finished,
    rather than walking a million subscribers in one run: a run stays short, and the continuation queues behind
    the deliveries and other promos' fan-outs published meanwhile. A worker lost mid-run loses at most the
    batch in flight: the redelivered message (or the sweep's recovery) resumes at each promo's cursor."""
    published = 0

    def publish(batch: fanout.FanOutBatch) -> None:
        nonlocal published
        scope = notifications.BatchScope(batch.promo_id, after=batch.after, through=batch.through)
        published += _publish_batches(batch.queued, scope=scope)

    run = fanout.promos_fan_out(promo_ids=promo_ids, now=timezone.now(), on_batch=publish)
    if run.unfinished:
        queue_promo_notifications.delay(run.unfinished)
    return {
        "notifications_queued": run.queued,
        "fan_out_batches": run.batches,
        "batches_published": published,
        "continued": len(run.unfinished),
    }


@shared_task(base=ObservableTask, singleton=True)
def process_notification_queue() -> dict[str, int]:
    """Safety net for deliveries: reclaim rows of dead workers and publish batches for what is due."""
    now = timezone.now()
    reclaimed = notifications.notifications_reclaim_expired(now=now)
    notifications.notifications_fail_for_inactive_promos(now=now)
    due = selectors.notifications_count_due(now=now, limit=MAX_BATCHES_PER_SWEEP * settings.NOTIFICATION_BATCH_SIZE)
    return {"reclaimed": reclaimed, "due": due, "batches_published": _publish_batches(due)}


@shared_task(ignore_result=True)
def deliver_notification_batch(
    promo_id: int | None = None, after_subscription: int | None = None, through_subscription: int | None = None
) -> dict[str, int]:
    """Deliver one batch of due notifications (claimed with SKIP LOCKED, so batches run side by side): of
    ``promo_id``'s subscriptions in ``(after_subscription, through_subscription]`` when published by the fan-out
    (``notifications.BatchScope`` says why), of any promo when published by the queue sweep."""
    bounds = (promo_id, after_subscription, through_subscription)
    scope = None
    if promo_id is not None and after_subscription is not None and through_subscription is not None:
        scope = notifications.BatchScope(promo_id, after=after_subscription, through=through_subscription)
    elif bounds != (None, None, None):  # a partial scope would claim nothing, or everything: refused (dead letter)
        raise ValueError(
            f"a delivery batch's scope needs promo_id, after_subscription and through_subscription: {bounds}"
        )

    def count(sent_lags: list[float], failed: int) -> None:  # per write: an interrupted batch's count too
        telemetry.notifications_delivered(
            channel=settings.NOTIFICATION_BACKEND, sent_lags_seconds=sent_lags, failed=failed
        )

    return notifications.notifications_deliver_batch(now=timezone.now(), scope=scope, on_recorded=count).summary()


@shared_task(base=ObservableTask, singleton=True)
def cleanup_expired_promos() -> dict[str, int]:
    """Delete promos finished longer than the retention period ago, in bounded batches."""
    return services.promos_cleanup_finished(now=timezone.now())


@shared_task(ignore_result=True)
def send_subscription_confirmation(subscription_id: int) -> dict[str, int]:
    """Mail the confirmation request of a subscription (published by ``request_confirmation``)."""
    return consent.subscription_send_confirmation(subscription_id=subscription_id)


def request_confirmation(subscription_id: int) -> None:
    """After the transaction that claimed a confirmation request commits, publish its mail: the request thread
    never talks to the mail provider. With the broker down the subscription stands, unconfirmed; subscribing
    again after the resend interval asks again (hence ``robust``)."""
    transaction.on_commit(lambda: send_subscription_confirmation.delay(subscription_id), robust=True)


def schedule_promptly() -> None:
    """After a transaction that created or moved promos commits, run a sweep at once: it publishes the
    countdown of any promo starting within the minute, which the next beat tick could make up to 60 s late.
    With the broker down the commit stands and the next beat tick catches up (hence ``robust``)."""
    transaction.on_commit(publish_sweep, robust=True)


def publish_sweep() -> None:
    """Publish one ``check_active_promos``; with the broker unreachable, say so in one line and return: the
    next beat tick runs the sweep anyway. Nothing reads its result, so the publish does not subscribe to it
    (a result backend on a dropped flow would fail the publish, and say the wrong server failed)."""
    try:
        check_active_promos.apply_async(ignore_result=True)
    except OperationalError as exc:
        log.warning(
            "promos.sweep_not_published",
            error=f"{type(exc).__name__}: {exc}"[:300],
            catch_up="the next beat tick runs the sweep",
        )


def _after_sync(result: PromoSyncResult) -> int:
    telemetry.promos_synced(result.activation_lags_seconds, ended=len(result.ended) + len(result.skipped))
    return _publish_fan_outs(result.activated)


def _publish_fan_outs(promo_ids: list[int]) -> int:
    # Published after the activation committed: a lost publish is caught by the sweep (FAN_OUT_RECOVERY_AFTER).
    chunks = [promo_ids[i : i + FAN_OUT_CHUNK] for i in range(0, len(promo_ids), FAN_OUT_CHUNK)]
    for chunk in chunks:
        queue_promo_notifications.delay(chunk)
    return len(chunks)


def _publish_batches(count: int, scope: notifications.BatchScope | None = None) -> int:
    # Delivery starts at once; the 30 s queue sweep only catches stragglers and retries.
    batches = min(math.ceil(count / settings.NOTIFICATION_BATCH_SIZE), MAX_BATCHES_PER_SWEEP)
    kwargs = (
        {"promo_id": scope.promo_id, "after_subscription": scope.after, "through_subscription": scope.through}
        if scope
        else {}
    )
    for _ in range(batches):
        deliver_notification_batch.apply_async(kwargs=kwargs)
    return batches
