"""Gauges of the promotions domain, measured by the worker's main process: the notification backlog and the
configured delivery rate limit."""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.db.models import Count
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from observability.telemetry import metric_names as m
from promotions.models import Notification, NotificationStatus

__all__ = ["register_gauges"]


def _backlog(options: CallbackOptions) -> Iterable[Observation]:
    try:
        close_old_connections()
        counts = dict(
            Notification.objects.filter(status__in=[NotificationStatus.PENDING, NotificationStatus.SENDING])
            .order_by()
            .values_list("status")
            .annotate(n=Count("id"))
        )
    except DatabaseError:
        return []
    return [Observation(counts.get(status, 0), {"status": status}) for status in ("pending", "sending")]


def _rate_limit(options: CallbackOptions) -> Iterable[Observation]:
    # 0: no limit. A gauge, not an attribute: "sent / limit" is then one PromQL division.
    return [Observation(settings.NOTIFICATION_RATE_LIMIT_PER_SECOND, {"channel": settings.NOTIFICATION_BACKEND})]


def register_gauges(meter: Meter) -> None:
    meter.create_observable_gauge(
        m.NOTIFICATIONS_BACKLOG, [_backlog], unit="{notification}", description="Notifications not yet delivered"
    )
    meter.create_observable_gauge(
        m.NOTIFICATIONS_RATE_LIMIT,
        [_rate_limit],
        unit="{notification}/s",
        description="Configured delivery rate limit per channel (0: none)",
    )
