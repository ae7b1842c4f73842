"""Reads of the promotions domain: what the API, the admin and the tasks ask of the database."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce

from promotions.models import FlashPromo, Notification, NotificationStatus, Product, PromoStatus

__all__ = [
    "notifications_count_due",
    "products_count_named",
    "promo_get",
    "promo_get_public",
    "promo_pending_start",
    "promos_awaiting_fan_out",
    "promos_list",
    "promos_list_public",
]


def _notification_count(status: str) -> Coalesce:
    # A correlated count per returned promo (an index-only scan of notification_promo_status), not a join and
    # GROUP BY over every notification of every promo: Postgres computes it for the rows a page returns only.
    rows = Notification.objects.filter(promo=OuterRef("pk"), status=status).order_by().values("promo")
    return Coalesce(Subquery(rows.annotate(count=Count("*")).values("count")), Value(0), output_field=IntegerField())


_COUNTS = {f"notifications_{status}": _notification_count(status) for status in NotificationStatus.values}


def promos_list(*, status: str | None = None, limit: int | None = None, offset: int = 0) -> QuerySet[FlashPromo]:
    """Promos, soonest start first, with notification counts by status; optionally of one status; ``limit``
    of them from ``offset``."""
    promos = FlashPromo.objects.annotate(**_COUNTS).order_by("starts_at", "id")
    if status:
        promos = promos.filter(status=status)
    return promos[offset : None if limit is None else offset + limit]


def promo_get(*, promo_id: int) -> FlashPromo:
    """One promo with notification counts; raises ``FlashPromo.DoesNotExist``."""
    return promos_list().get(pk=promo_id)


def promos_list_public(*, status: str | None = None, limit: int | None = None, offset: int = 0) -> QuerySet[FlashPromo]:
    """What anyone may see: active promos only (a scheduled one is not announced yet, an ended or cancelled one
    is over), soonest start first, without counts (they would tell each product's subscriber count). Filtering
    on another status gives nothing."""
    promos = FlashPromo.objects.filter(status=PromoStatus.ACTIVE).order_by("starts_at", "id")
    if status:
        promos = promos.filter(status=status)
    return promos[offset : None if limit is None else offset + limit]


def promo_get_public(*, promo_id: int) -> FlashPromo:
    """One promo anyone may see (active); raises ``FlashPromo.DoesNotExist`` for any other, as for none."""
    return promos_list_public().get(pk=promo_id)


def promo_pending_start(*, promo_id: int) -> datetime | None:
    """The start time of ``promo_id`` if it is still scheduled, else None."""
    return (
        FlashPromo.objects.filter(pk=promo_id, status=PromoStatus.SCHEDULED).values_list("starts_at", flat=True).first()
    )


def notifications_count_due(*, now: datetime, limit: int) -> int:
    """Pending notifications due by ``now``, counted up to ``limit`` (a bounded scan of the due index)."""
    due = Notification.objects.filter(status=NotificationStatus.PENDING, next_attempt_at__lte=now)
    return due.values("id")[:limit].count()


def promos_awaiting_fan_out(*, idle_since: datetime, limit: int) -> list[int]:
    """Active promos whose fan-out is not finished and made no progress since ``idle_since`` - its last batch
    (or, before the first, its activation) is older: the fan-out task was lost, or its worker died mid-walk.
    Oldest first, at most ``limit`` (a scan of a partial index: active promos not yet queued)."""
    awaiting = FlashPromo.objects.filter(status=PromoStatus.ACTIVE, notifications_queued=False).alias(
        progress_at=Coalesce("fan_out_at", "activated_at")
    )
    stalled = awaiting.filter(progress_at__lt=idle_since).order_by("progress_at")
    return list(stalled.values_list("id", flat=True)[:limit])


def products_count_named(*, names: list[str]) -> int:
    """How many products bear one of ``names`` (the demo's products, for ``seed_demo`` to run once)."""
    return Product.objects.filter(name__in=names).count()
