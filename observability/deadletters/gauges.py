"""Gauges of the dead-letter store, measured by the worker's main process at each metric export: pending
entries by task and reason, and the age of the oldest pending one."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import DatabaseError, close_old_connections
from django.db.models import Count, Min
from django.utils import timezone
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from observability.deadletters.models import DeadLetter, DeadLetterStatus
from observability.telemetry import metric_names as m

__all__ = ["register"]


def _dead_letters_pending(options: CallbackOptions) -> Iterable[Observation]:
    try:
        close_old_connections()
        rows = (
            DeadLetter.objects.filter(status=DeadLetterStatus.PENDING)
            .order_by()
            .values("task_name", "reason")
            .annotate(n=Count("id"))
        )
        return [Observation(row["n"], {"task": row["task_name"] or "(none)", "reason": row["reason"]}) for row in rows]
    except DatabaseError:
        return []


def _dead_letters_oldest_age(options: CallbackOptions) -> Iterable[Observation]:
    try:
        close_old_connections()
        oldest = DeadLetter.objects.filter(status=DeadLetterStatus.PENDING).aggregate(t=Min("first_failed_at"))["t"]
    except DatabaseError:
        return []
    return [Observation((timezone.now() - oldest).total_seconds() if oldest else 0.0)]


def register(meter: Meter) -> None:
    """Register the dead-letter gauges on ``meter`` (the worker main process's)."""
    meter.create_observable_gauge(
        m.DEAD_LETTERS_PENDING, [_dead_letters_pending], unit="{entry}", description="Pending dead letters"
    )
    meter.create_observable_gauge(
        m.DEAD_LETTERS_OLDEST_PENDING_AGE, [_dead_letters_oldest_age], unit="s", description="Oldest pending age"
    )
