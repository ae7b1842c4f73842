"""The operator's resend of failed notifications (the admin action and ``manage.py notifications retry``): due
again at once, with a fresh attempt budget and their idempotency keys; ``promotions.notifications`` delivers them.
"""

from __future__ import annotations

from datetime import datetime

import structlog

from promotions.models import Notification, NotificationStatus, PromoStatus

__all__ = ["notifications_retry"]

log = structlog.get_logger(__name__)


def notifications_retry(
    *,
    now: datetime,
    status: NotificationStatus = NotificationStatus.FAILED,
    notification_ids: list[int] | None = None,
    promo_id: int | None = None,
    since: datetime | None = None,
    dry_run: bool = False,
) -> int:
    """Put ``failed`` notifications of live promos back as due now; returns how many (would be) put back.

    Attempts start again from 0: a resend is an operator's decision once the cause is fixed (an SMTP outage used
    up the budget), and a row left at its last attempt would fail again at the first transient error. The
    idempotency key stays, so a provider drops a message that did go out before its outcome was lost. Rows of
    promos no longer live are left failed: nobody is told about a dead deal (the claim would skip them and the
    queue sweep fail them again). The next queue sweep (``NOTIFICATION_QUEUE_INTERVAL_SECONDS``) delivers them.
    Filters: ``notification_ids``, ``promo_id``, ``since`` (failed at or after)."""
    if status != NotificationStatus.FAILED:
        raise ValueError(f"only failed notifications can be resent, not {status!r}")
    rows = Notification.objects.filter(
        status=NotificationStatus.FAILED, promo__status=PromoStatus.ACTIVE, promo__ends_at__gt=now
    )
    if notification_ids is not None:
        rows = rows.filter(pk__in=notification_ids)
    if promo_id is not None:
        rows = rows.filter(promo_id=promo_id)
    if since is not None:
        rows = rows.filter(failed_at__gte=since)
    if dry_run:
        return rows.count()  # nothing done, nothing logged as done: the caller prints what would be
    count = rows.update(
        status=NotificationStatus.PENDING,
        attempts=0,
        next_attempt_at=now,
        failed_at=None,
        claim_token=None,
        lease_expires_at=None,
    )
    log.info(
        "notifications.retried",
        count=count,
        **{key: value for key, value in {"promo_id": promo_id, "since": since}.items() if value is not None},
    )
    return count
