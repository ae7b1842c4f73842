"""Writes and rules of the promotions domain: creating, moving and cancelling promos, state transitions, cleanup.

Every sweep is set-based: a constant number of SQL statements however many promos are due, and each
statement is conditional on the current state, so running a sweep twice - or two at once - changes nothing
more than running it once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

import structlog
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction

from promotions.models import FlashPromo, Notification, Product, PromoStatus, Subscription

__all__ = [
    "PromoConflictError",
    "PromoSyncResult",
    "Transition",
    "product_create",
    "promo_cancel",
    "promo_create",
    "promo_update",
    "promo_validate_schedule",
    "promos_claim_upcoming_transitions",
    "promos_cleanup_finished",
    "promos_sync_state",
    "subscription_create",
]

log = structlog.get_logger(__name__)

_PROMO = FlashPromo._meta.db_table
_NOTIFICATION = Notification._meta.db_table


@dataclass(frozen=True)
class Transition:
    """A promo state change due at ``due_at`` that a countdown task should carry out."""

    promo_id: int
    due_at: datetime


@dataclass
class PromoSyncResult:
    activated: list[int] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)
    #: Promos whose whole window passed while scheduled (an outage): ended without going live.
    skipped: list[int] = field(default_factory=list)
    activation_lags_seconds: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        return {"activated": len(self.activated), "ended": len(self.ended), "skipped": len(self.skipped)}


class PromoConflictError(Exception):
    """The promo's status does not allow the change asked for: it went live, ended or was cancelled first."""

    def __init__(self, *, promo_id: int, status: str, action: str, allowed: tuple[str, ...]) -> None:
        self.promo_id = promo_id
        self.status = status
        super().__init__(f"Promo {promo_id} is {status}: only a {' or '.join(allowed)} promo can be {action}.")


def product_create(*, name: str, price: Decimal) -> Product:
    return Product.objects.create(name=name, price=price)


def subscription_create(
    *, product: Product, email: str, confirmed_at: datetime | None = None
) -> tuple[Subscription, bool]:
    """Subscribe ``email`` to ``product`` without asking the address - for addresses that gave their consent
    elsewhere (the demo's example.com ones): with ``confirmed_at`` it is notified from then on. Repeating it
    returns the existing row, unchanged, and ``created=False``. The public path, which asks the address first,
    is ``consent.subscription_request``."""
    return Subscription.objects.get_or_create(
        product=product, email=email.strip().lower(), defaults={"confirmed_at": confirmed_at}
    )


def promo_validate_schedule(*, starts_at: datetime, ends_at: datetime, now: datetime, start_moved: bool = True) -> None:
    """Refuse a promo window that makes no sense, raising ``ValidationError`` with messages by field:

    - ``starts_at`` more than ``PROMO_START_PAST_TOLERANCE_SECONDS`` in the past (checked only when the start
      is new or moved, ``start_moved``): it would go live at once with a misleading activation lag, or end
      without going live;
    - ``starts_at`` or ``ends_at`` more than ``PROMO_MAX_HORIZON_DAYS`` ahead (a mistyped year);
    - ``ends_at`` not later than ``starts_at``, or more than ``PROMO_MAX_DURATION_DAYS`` after it.
    """
    horizon = now + timedelta(days=settings.PROMO_MAX_HORIZON_DAYS)
    beyond = f"Must be at most {settings.PROMO_MAX_HORIZON_DAYS} days ahead."
    errors: dict[str, list[str]] = {"starts_at": [], "ends_at": []}
    if start_moved and starts_at < now - timedelta(seconds=settings.PROMO_START_PAST_TOLERANCE_SECONDS):
        errors["starts_at"].append(
            f"Must not be in the past (at most {settings.PROMO_START_PAST_TOLERANCE_SECONDS} s before now)."
        )
    if starts_at > horizon:
        errors["starts_at"].append(beyond)
    if ends_at <= starts_at:
        errors["ends_at"].append("Must be later than starts_at.")
    elif not errors["starts_at"] and ends_at - starts_at > timedelta(days=settings.PROMO_MAX_DURATION_DAYS):
        # Only from a valid start: a start typed years ago makes any end "too long", which is not the mistake.
        errors["ends_at"].append(f"Must be at most {settings.PROMO_MAX_DURATION_DAYS} days after starts_at.")
    if ends_at > horizon:
        errors["ends_at"].append(beyond)
    if errors["starts_at"] or errors["ends_at"]:
        raise ValidationError({field: messages for field, messages in errors.items() if messages})


def promo_create(
    *, product: Product, title: str, discount_percent: int, starts_at: datetime, ends_at: datetime, now: datetime
) -> FlashPromo:
    """Create a scheduled promo; its window must pass ``promo_validate_schedule`` (else ``ValidationError``)."""
    promo_validate_schedule(starts_at=starts_at, ends_at=ends_at, now=now)
    return FlashPromo.objects.create(
        product=product, title=title, discount_percent=discount_percent, starts_at=starts_at, ends_at=ends_at
    )


@transaction.atomic
def promo_update(
    *,
    promo_id: int,
    now: datetime,
    title: str | None = None,
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
) -> FlashPromo:
    """Change the title or times of a scheduled promo; the new window must pass ``promo_validate_schedule``.

    Raises ``FlashPromo.DoesNotExist``, ``PromoConflictError`` once the promo is no longer scheduled, or
    ``ValidationError``. The row lock orders this against the sweep and the countdowns: their activation is an
    ``UPDATE ... WHERE status = 'scheduled' AND starts_at <= now`` that, waiting on the lock, re-reads the
    committed row - so whichever commits first wins, and a promo never goes live on a start just moved away.
    New times clear the countdown marks, so the next sweep (``tasks.schedule_promptly``) publishes countdowns
    for them; the old countdowns find their time gone and do nothing (``promos_sync_state(due_at=...)``).
    """
    promo = FlashPromo.objects.select_for_update().get(pk=promo_id)
    if promo.status != PromoStatus.SCHEDULED:
        raise PromoConflictError(promo_id=promo_id, status=promo.status, action="changed", allowed=("scheduled",))
    new_start = promo.starts_at if starts_at is None else starts_at
    new_end = promo.ends_at if ends_at is None else ends_at
    promo_validate_schedule(starts_at=new_start, ends_at=new_end, now=now, start_moved=new_start != promo.starts_at)
    changed = [
        name
        for name, value in (("title", title), ("starts_at", new_start), ("ends_at", new_end))
        if value is not None and value != getattr(promo, name)
    ]
    if not changed:
        return promo
    promo.title = promo.title if title is None else title
    promo.starts_at, promo.ends_at = new_start, new_end
    if {"starts_at", "ends_at"} & set(changed):
        promo.activation_enqueued = promo.end_enqueued = False
        changed += ["activation_enqueued", "end_enqueued"]
    promo.save(update_fields=changed)
    log.info("promo.updated", promo_id=promo_id, fields=sorted(set(changed) & {"title", "starts_at", "ends_at"}))
    return promo


def promo_cancel(*, promo_id: int, now: datetime) -> bool:
    """Cancel a scheduled or active promo: one conditional ``UPDATE``, so a sweep ending or activating it at
    the same moment either comes first (then this sees its status) or finds it cancelled and leaves it.

    Returns True if this call cancelled it, False if it was already cancelled (a retried request). Raises
    ``FlashPromo.DoesNotExist``, or ``PromoConflictError`` for an ended promo. Its countdowns, its fan-out and the
    claims of its pending notifications all act on active or scheduled promos only, so nothing more is sent;
    the next queue sweep marks the pending notifications failed. A batch already handed to the channel
    (``sending``) can still go out.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH target AS (
                SELECT id, status FROM {_PROMO} WHERE id = %(id)s AND status IN ('scheduled', 'active') FOR UPDATE
            )
            UPDATE {_PROMO} p SET status = 'cancelled', ended_at = %(now)s FROM target WHERE p.id = target.id
            RETURNING target.status
            """,  # noqa: S608 - table names come from model metadata, values are parameters
            {"id": promo_id, "now": now},
        )
        row = cursor.fetchone()
    if row is not None:
        log.info("promo.cancelled", promo_id=promo_id, previous_status=row[0])
        return True
    status = FlashPromo.objects.values_list("status", flat=True).get(pk=promo_id)
    if status == PromoStatus.CANCELLED:
        return False
    raise PromoConflictError(promo_id=promo_id, status=status, action="cancelled", allowed=("scheduled", "active"))


@transaction.atomic
def promos_sync_state(*, now: datetime, promo_id: int | None = None, due_at: datetime | None = None) -> PromoSyncResult:
    """Activate due promos and end finished ones - all promos, or only ``promo_id``. Two statements whatever
    the number of promos. The activated promos' notifications are queued afterwards, in transactions of their
    own (``fanout.promos_fan_out``), so activation never waits on the fan-out.

    ``due_at`` (with ``promo_id``: a countdown's time) acts only while that is still the promo's start or end:
    a countdown left over from times since moved (``promo_update``) changes nothing, in the same statement."""
    only_one = "AND id = %(promo_id)s" if promo_id is not None else ""
    if due_at is not None:
        only_one += " AND %(due_at)s IN (starts_at, ends_at)"
    params = {"now": now, "promo_id": promo_id, "due_at": due_at}
    result = PromoSyncResult()
    with connection.cursor() as cursor:
        # A promo whose window already closed never goes live: customers must not be told of a dead deal.
        cursor.execute(
            f"""
            UPDATE {_PROMO}
               SET status = CASE WHEN ends_at <= %(now)s THEN 'ended' ELSE 'active' END,
                   activated_at = CASE WHEN ends_at <= %(now)s THEN NULL ELSE %(now)s END,
                   ended_at = CASE WHEN ends_at <= %(now)s THEN %(now)s ELSE NULL END
             WHERE status = 'scheduled' AND starts_at <= %(now)s {only_one}
            RETURNING id, status, starts_at
            """,  # noqa: S608 - table names come from model metadata, values are parameters
            params,
        )
        for pk, status, starts_at in cursor.fetchall():
            if status == PromoStatus.ACTIVE:
                result.activated.append(pk)
                result.activation_lags_seconds.append((now - starts_at).total_seconds())
            else:
                result.skipped.append(pk)
        cursor.execute(
            f"""
            UPDATE {_PROMO} SET status = 'ended', ended_at = %(now)s
             WHERE status = 'active' AND ends_at <= %(now)s {only_one}
            RETURNING id
            """,  # noqa: S608
            params,
        )
        result.ended = [row[0] for row in cursor.fetchall()]
    for pk, lag in zip(result.activated, result.activation_lags_seconds, strict=True):
        log.info("promo.activated", promo_id=pk, activation_lag_ms=round(lag * 1000, 1))
    for pk in result.ended:
        log.info("promo.ended", promo_id=pk)
    for pk in result.skipped:
        log.warning("promo.skipped", promo_id=pk, reason="window closed before activation")
    return result


def promos_claim_upcoming_transitions(*, now: datetime) -> list[Transition]:
    """Mark and return the starts and ends due within the transition horizon that no countdown task has
    been published for yet. Two statements; a promo is returned once per transition."""
    params = {"horizon_end": now + timedelta(seconds=settings.PROMO_TRANSITION_HORIZON_SECONDS)}
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {_PROMO} SET activation_enqueued = TRUE
             WHERE status = 'scheduled' AND NOT activation_enqueued AND starts_at <= %(horizon_end)s
            RETURNING id, starts_at
            """,  # noqa: S608
            params,
        )
        transitions = [Transition(pk, due_at) for pk, due_at in cursor.fetchall()]
        cursor.execute(
            f"""
            UPDATE {_PROMO} SET end_enqueued = TRUE
             WHERE status IN ('scheduled', 'active') AND NOT end_enqueued AND ends_at <= %(horizon_end)s
            RETURNING id, ends_at
            """,  # noqa: S608
            params,
        )
        transitions += [Transition(pk, due_at) for pk, due_at in cursor.fetchall()]
    return transitions


def promos_cleanup_finished(*, now: datetime) -> dict[str, int]:
    """Delete promos ended or cancelled more than ``PROMO_RETENTION_DAYS`` ago, with their notifications.

    Deleted, not archived: a promo's effect on prices lives on in the orders that used it, and its
    notifications are a delivery log with no value once the promo is over. Every statement deletes at most
    ``PROMO_CLEANUP_NOTIFICATION_BATCH_SIZE`` notifications or ``PROMO_CLEANUP_BATCH_SIZE`` promos in its own
    short transaction, so no run holds long locks even for a promo with 100,000 notifications; a run stops
    after ``PROMO_CLEANUP_MAX_BATCHES`` statements or ``PROMO_CLEANUP_TIME_BUDGET_SECONDS`` (checked after each
    statement: every run makes progress) and the next run goes on where it stopped.
    """
    cutoff = now - timedelta(days=settings.PROMO_RETENTION_DAYS)
    batch = settings.PROMO_CLEANUP_BATCH_SIZE
    deadline = time.monotonic() + settings.PROMO_CLEANUP_TIME_BUDGET_SECONDS
    totals = {"promos_deleted": 0, "notifications_deleted": 0, "batches": 0}
    finished = FlashPromo.objects.filter(status__in=[PromoStatus.ENDED, PromoStatus.CANCELLED], ended_at__lt=cutoff)
    with connection.cursor() as cursor:
        while totals["batches"] < settings.PROMO_CLEANUP_MAX_BATCHES and (
            not totals["batches"] or time.monotonic() < deadline
        ):
            promo_ids = list(finished.order_by("ended_at").values_list("id", flat=True)[:batch])
            if not promo_ids:
                break
            totals["batches"] += 1
            cursor.execute(
                f"""
                DELETE FROM {_NOTIFICATION} WHERE id IN (
                    SELECT id FROM {_NOTIFICATION} WHERE promo_id = ANY(%(ids)s) LIMIT %(batch)s)
                """,  # noqa: S608
                {"ids": promo_ids, "batch": settings.PROMO_CLEANUP_NOTIFICATION_BATCH_SIZE},
            )
            if cursor.rowcount:
                totals["notifications_deleted"] += cursor.rowcount
                continue
            # No notification is left for these promos: the promos go, with no cascade left to follow.
            cursor.execute(f"DELETE FROM {_PROMO} WHERE id = ANY(%(ids)s)", {"ids": promo_ids})  # noqa: S608
            totals["promos_deleted"] += cursor.rowcount
    if totals["batches"]:
        log.info("promos.cleaned_up", **totals, retention_days=settings.PROMO_RETENTION_DAYS)
    return totals
