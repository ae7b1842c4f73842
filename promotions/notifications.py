"""The notification outbox: deliver the rows the fan-out (``promotions.fanout``) queued - claim a batch, send it
through the channel backend, record each outcome.

Failed rows are an operator's to resend (``promotions.resend``).

Claims use ``SELECT ... FOR UPDATE SKIP LOCKED`` so any number of workers drain the queue at once without
two of them taking the same row. A claimed row is ``sending`` under a lease: if its worker dies, the next
queue sweep puts it back to ``pending`` once the lease has expired. Outcomes are written only under the
claim's token, so a worker that lost its lease cannot overwrite the newer claim's outcome.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from django.conf import settings
from django.db import connection, transaction

from observability.backoff import backoff_seconds
from promotions import consent
from promotions.channels import DeliveryFailure, OutgoingMessage, get_backend
from promotions.models import (
    FlashPromo,
    Notification,
    NotificationStatus,
    Product,
    Subscription,
)
from promotions.ratelimit import Pacer

__all__ = [
    "BatchScope",
    "DeliveryResult",
    "OnRecorded",
    "notifications_deliver_batch",
    "notifications_fail_for_inactive_promos",
    "notifications_reclaim_expired",
]

log = structlog.get_logger(__name__)

_NOTIFICATION = Notification._meta.db_table
_PROMO = FlashPromo._meta.db_table
_PRODUCT = Product._meta.db_table
_SUBSCRIPTION = Subscription._meta.db_table

#: Called for each write of a batch's outcomes: (the delivery lag of each row written sent, rows given up on).
OnRecorded = Callable[[list[float], int], object]


@dataclass(frozen=True)
class BatchScope:
    """The rows a delivery batch published for one fan-out batch may claim: its promo's notifications for the
    subscriptions with ids in ``(after, through]``.

    Why a batch is scoped: the fan-out publishes one delivery batch per ``NOTIFICATION_BATCH_SIZE`` rows of
    each fan-out batch it commits. Unscoped, those batches took any due row, and two of them running side by
    side lost rows: a batch whose statement saw only the first fan-out batch, while the second batch's (seeing
    both) had locked some of those rows, skipped them and took fewer, and as many rows of the second fan-out
    batch were left to the 30 s queue sweep (1 of 1,000 in a CI run). Batches of one scope all see the same
    committed rows, so between them they claim every one; what another batch (the sweep's) takes is claimed.
    Rows a batch hands back (the rate limit's budget ran out, an interrupted batch) are the sweep's, as before."""

    promo_id: int
    after: int
    through: int


@dataclass(frozen=True)
class DeliveryResult:
    claimed: int
    sent: int
    retrying: int
    failed: int

    def summary(self) -> dict[str, int]:
        return {"claimed": self.claimed, "sent": self.sent, "retrying": self.retrying, "failed": self.failed}


def notifications_reclaim_expired(*, now: datetime) -> int:
    """Put rows whose delivery lease lapsed (their worker died) back to ``pending``, or ``failed`` once
    they used up their attempts. Returns the number of rows reclaimed."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {_NOTIFICATION}
               SET status = CASE WHEN attempts >= %(max_attempts)s THEN 'failed' ELSE 'pending' END,
                   failed_at = CASE WHEN attempts >= %(max_attempts)s THEN %(now)s END,
                   claim_token = NULL, lease_expires_at = NULL, next_attempt_at = %(now)s,
                   last_error = 'delivery lease expired: the worker was lost mid-delivery'
             WHERE status = 'sending' AND lease_expires_at <= %(now)s
            """,  # noqa: S608 - table names come from model metadata, values are parameters
            {"now": now, "max_attempts": settings.NOTIFICATION_MAX_ATTEMPTS},
        )
        reclaimed = int(cursor.rowcount)
    if reclaimed:
        log.warning("notifications.reclaimed", count=reclaimed)
    return reclaimed


def notifications_fail_for_inactive_promos(*, now: datetime) -> int:
    """Give up on pending notifications of promos that were cancelled or ended before delivery."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {_NOTIFICATION} n
               SET status = 'failed', failed_at = %(now)s, last_error = 'the promo is no longer active'
              FROM {_PROMO} p
             WHERE p.id = n.promo_id AND n.status = 'pending' AND (p.status <> 'active' OR p.ends_at <= %(now)s)
            """,  # noqa: S608
            {"now": now},
        )
        return int(cursor.rowcount)


def notifications_deliver_batch(
    *,
    now: datetime,
    batch_size: int | None = None,
    scope: BatchScope | None = None,
    on_recorded: OnRecorded | None = None,
) -> DeliveryResult:
    """Claim up to ``batch_size`` due notifications (of ``scope`` only, when given), deliver them and record each
    outcome - as the batch goes, at least every ``RECORD_INTERVAL_SECONDS``, calling ``on_recorded(sent_lags,
    failed)`` for each write: the delivery lag in seconds of each notification recorded sent (``sent_at`` minus
    its promo's activation, or minus the subscription or its confirmation where those came later), and how many
    were given up on.
    Interrupted (the soft time limit, an error outside the backend's per-message handling), it records what was
    sent and hands the rest back - ``pending``, due now, the claim's attempt given back - then re-raises: only
    the message in flight at that moment may be sent twice. Sends are paced by the channel's rate limit
    (``promotions.ratelimit``); rows the batch could not send within its waiting budget, and rows the provider
    throttled, are handed back the same way."""
    token = uuid.uuid4()
    messages = _claim(now=now, token=token, limit=batch_size or settings.NOTIFICATION_BATCH_SIZE, scope=scope)
    if not messages:
        return DeliveryResult(0, 0, 0, 0)
    pacer = Pacer(settings.NOTIFICATION_BACKEND)
    outcomes = _Outcomes(token, on_recorded, pacer)
    try:
        with closing(get_backend(settings.NOTIFICATION_BACKEND).send(pacer.pace(messages))) as delivered:
            for notification_id, failure in delivered:
                outcomes.add(notification_id, failure)
    except BaseException as exc:
        outcomes.record()
        unsent = [m.notification_id for m in messages if not outcomes.knows(m.notification_id)]
        _release(token=token, ids=unsent, why=f"delivery interrupted: {type(exc).__name__}")
        raise
    outcomes.record()
    if pacer.stopped:  # the rate limit or a throttle pause outlasted the batch's waiting budget
        unsent = [m.notification_id for m in messages if not outcomes.knows(m.notification_id)]
        _release(token=token, ids=unsent, why=pacer.stopped)
        outcomes.retrying += len(unsent)
    result = DeliveryResult(len(messages), sent=outcomes.sent, retrying=outcomes.retrying, failed=outcomes.failed)
    # One line a batch, at WARNING when anything was not sent: "delivered" for a batch that sent nothing hid an
    # SMTP outage at INFO.
    if result.sent == result.claimed:
        log.info("notifications.batch_sent", **result.summary())
    else:
        log.warning("notifications.batch_not_all_sent", **result.summary())
    return result


#: Outcomes are written at least this often while a batch is delivered: a worker killed mid-batch (hard time
#: limit, OOM, a deploy's SIGKILL) leaves at most this long of sent messages unrecorded, which the queue sweep
#: hands out again once their lease expires.
RECORD_INTERVAL_SECONDS = 1.0


class _Outcomes:
    """A batch's outcomes not yet written, and the totals of those written. A throttled message has no outcome
    yet: the pacer sends it again after the channel's pause (or it is handed back with the batch's unsent)."""

    def __init__(self, token: uuid.UUID, on_recorded: OnRecorded | None, pacer: Pacer) -> None:
        self._token = token
        self._on_recorded = on_recorded
        self._pacer = pacer
        self._sent_ids: list[int] = []
        self._failures: dict[int, DeliveryFailure] = {}
        self._known: set[int] = set()
        self._recorded_at = time.monotonic()
        self.sent = self.retrying = self.failed = 0

    def knows(self, notification_id: int) -> bool:
        return notification_id in self._known

    def add(self, notification_id: int, failure: DeliveryFailure | None) -> None:
        if failure is None:
            self._sent_ids.append(notification_id)
        elif failure.throttled:
            self._pacer.throttled(notification_id)
            return
        else:
            self._failures[notification_id] = failure
        self._known.add(notification_id)  # last: interrupted before this, the outcome is still written
        if time.monotonic() - self._recorded_at >= RECORD_INTERVAL_SECONDS:
            self.record()

    def record(self) -> None:
        if self._sent_ids or self._failures:
            sent_lags, retrying, failed = _record_outcomes(
                token=self._token, sent_ids=self._sent_ids, failures=self._failures
            )
            self.sent += len(sent_lags)
            self.retrying += retrying
            self.failed += failed
            self._sent_ids, self._failures = [], {}
            if self._on_recorded:
                self._on_recorded(sent_lags, failed)
        self._recorded_at = time.monotonic()


def _release(*, token: uuid.UUID, ids: list[int], why: str) -> None:
    """Hand claimed rows that were not tried back to the queue: due now, their claim's attempt given back."""
    if not ids:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {_NOTIFICATION}
               SET status = 'pending', attempts = attempts - 1, next_attempt_at = now(), last_error = %(why)s,
                   claim_token = NULL, lease_expires_at = NULL
             WHERE id = ANY(%(ids)s) AND claim_token = %(token)s
            """,  # noqa: S608
            {"ids": ids, "token": token, "why": why},
        )


def _claim(*, now: datetime, token: uuid.UUID, limit: int, scope: BatchScope | None) -> list[OutgoingMessage]:
    # A scope is a range of subscription ids, read through the subscription_id index in its order (the promo is
    # checked per row: a subscriber of several promos has a row for each). A scoped claim reads its own rows only,
    # however many others are due: 1.3 ms for 500 of 400,000 pending in EXPLAIN ANALYZE, as the sweep's claim.
    in_scope, order = (
        (
            "AND n.promo_id = %(promo)s AND n.subscription_id > %(after)s AND n.subscription_id <= %(through)s",
            "n.subscription_id",
        )
        if scope
        else ("", "n.next_attempt_at")
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH due AS (
                SELECT n.id FROM {_NOTIFICATION} n JOIN {_PROMO} p ON p.id = n.promo_id
                 WHERE n.status = 'pending' AND n.next_attempt_at <= %(now)s
                   -- A cancelled or finished promo is a dead deal: nobody is told about it any more.
                   AND p.status = 'active' AND p.ends_at > %(now)s
                   {in_scope}
                 ORDER BY {order}
                 LIMIT %(limit)s
                   FOR UPDATE OF n SKIP LOCKED
            )
            UPDATE {_NOTIFICATION} n
               -- A row whose subscriber unsubscribed after the fan-out wrote it is given up on, never sent.
               SET status = CASE WHEN s.unsubscribed_at IS NULL THEN 'sending' ELSE 'failed' END,
                   attempts = n.attempts + (s.unsubscribed_at IS NULL)::int,
                   failed_at = CASE WHEN s.unsubscribed_at IS NULL THEN NULL ELSE %(now)s END,
                   last_error = CASE WHEN s.unsubscribed_at IS NULL THEN n.last_error ELSE %(unsubscribed)s END,
                   claim_token = CASE WHEN s.unsubscribed_at IS NULL THEN %(token)s::uuid END,
                   lease_expires_at = CASE WHEN s.unsubscribed_at IS NULL THEN %(lease_until)s::timestamptz END
              FROM due, {_SUBSCRIPTION} s, {_PROMO} p, {_PRODUCT} pr
             WHERE n.id = due.id AND s.id = n.subscription_id AND p.id = n.promo_id AND pr.id = p.product_id
            RETURNING n.id, n.status, n.idempotency_key, s.id, s.email, p.title, p.discount_percent, pr.name,
                      p.ends_at
            """,  # noqa: S608
            {
                "now": now,
                "limit": limit,
                "token": token,
                "lease_until": now + timedelta(seconds=settings.NOTIFICATION_LEASE_SECONDS),
                "unsubscribed": consent.UNSUBSCRIBED,
                **({"promo": scope.promo_id, "after": scope.after, "through": scope.through} if scope else {}),
            },
        )
        claimed = cursor.fetchall()
    rows = [row for row in claimed if row[1] == NotificationStatus.SENDING]
    if len(rows) < len(claimed):
        log.info("notifications.unsubscribed_skipped", count=len(claimed) - len(rows))
    return [
        OutgoingMessage(
            notification_id=pk,
            idempotency_key=str(key),
            recipient=email,
            # One line: a line break in a header is refused by Django's email and by SNS (older rows may hold one).
            subject=" ".join(f"{discount}% off {product}: {title}".split()),
            body=f"{title}: {product} is {discount}% off until {ends_at:%Y-%m-%d %H:%M} UTC.\n\nUnsubscribe: {url}",
            unsubscribe_url=url,
        )
        for pk, _, key, subscription_id, email, title, discount, product, ends_at in rows
        for url in [consent.unsubscribe_url(subscription_id=subscription_id)]
    ]


@transaction.atomic
def _record_outcomes(
    *, token: uuid.UUID, sent_ids: list[int], failures: dict[int, DeliveryFailure]
) -> tuple[list[float], int, int]:
    """Mark ``sent_ids`` sent and back off or fail the rest, only where the claim still holds; at most three
    statements. Returns (the delivery lag of each row written sent, retrying, failed)."""
    sent_lags: list[float] = []
    with connection.cursor() as cursor:
        if sent_ids:
            # The lag is read from the rows written, so it counts exactly what was recorded sent. GREATEST: a
            # subscriber who subscribed (or confirmed) once the promo was live is late only from then on; the
            # fan-out's own delay counts.
            cursor.execute(
                f"""
                UPDATE {_NOTIFICATION} n
                   SET status = 'sent', sent_at = now(), claim_token = NULL, lease_expires_at = NULL,
                       last_error = ''
                  FROM {_PROMO} p, {_SUBSCRIPTION} s
                 WHERE n.id = ANY(%(ids)s) AND n.claim_token = %(token)s
                   AND p.id = n.promo_id AND s.id = n.subscription_id
                RETURNING extract(epoch FROM n.sent_at - GREATEST(p.activated_at, s.created_at, s.confirmed_at))
                """,  # noqa: S608
                {"ids": sent_ids, "token": token},
            )
            sent_lags = [max(0.0, float(lag)) for (lag,) in cursor.fetchall()]
        if not failures:
            return sent_lags, 0, 0
        # FOR UPDATE: no reclaim can take these rows between reading their attempts and writing the outcome.
        cursor.execute(
            f"SELECT id, attempts FROM {_NOTIFICATION} WHERE id = ANY(%(ids)s) AND claim_token = %(token)s FOR UPDATE",  # noqa: S608
            {"ids": list(failures), "token": token},
        )
        attempts = dict(cursor.fetchall())
        give_up = [
            pk for pk in attempts if failures[pk].permanent or attempts[pk] >= settings.NOTIFICATION_MAX_ATTEMPTS
        ]
        delays = [
            backoff_seconds(
                attempts[pk] - 1,
                base=settings.NOTIFICATION_RETRY_BASE_SECONDS,
                cap=settings.NOTIFICATION_RETRY_MAX_SECONDS,
            )
            for pk in attempts
        ]
        cursor.execute(
            f"""
            UPDATE {_NOTIFICATION} n
               SET status = CASE WHEN n.id = ANY(%(give_up)s) THEN 'failed' ELSE 'pending' END,
                   failed_at = CASE WHEN n.id = ANY(%(give_up)s) THEN now() END,
                   next_attempt_at = now() + make_interval(secs => f.delay),
                   last_error = f.error, claim_token = NULL, lease_expires_at = NULL
              FROM unnest(%(ids)s::bigint[], %(delays)s::float8[], %(errors)s::text[]) AS f(id, delay, error)
             WHERE n.id = f.id AND n.claim_token = %(token)s
            """,  # noqa: S608
            {
                "give_up": give_up,
                "ids": list(attempts),
                "delays": delays,
                "errors": [failures[pk].error for pk in attempts],
                "token": token,
            },
        )
    for pk in give_up:
        # Per row at DEBUG: the batch's line counts them, and an outage would write one line per subscriber.
        log.debug("notification.failed", notification_id=pk, error=failures[pk].error, attempts=attempts[pk])
    return sent_lags, len(attempts) - len(give_up), len(give_up)
