"""Reads of dead letters: filtered lists and statistics for the ``dlq`` command and the admin."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Count, Min, Q, QuerySet
from django.utils import timezone

from observability.deadletters.models import DeadLetter, DeadLetterStatus

__all__ = ["DeadLetterFilter", "dead_letters_filter", "dead_letters_stats"]


@dataclass(frozen=True)
class DeadLetterFilter:
    task: str | None = None
    reason: str | None = None
    exception: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    ids: tuple[int, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not any((self.task, self.reason, self.exception, self.status, self.since, self.until, self.ids))


def dead_letters_filter(criteria: DeadLetterFilter) -> QuerySet[DeadLetter]:
    """Entries matching every given criterion, newest failure first. ``exception`` matches the exception
    type's class name or its full dotted path."""
    entries = DeadLetter.objects.all()
    if criteria.ids:
        entries = entries.filter(pk__in=criteria.ids)
    if criteria.task:
        entries = entries.filter(task_name=criteria.task)
    if criteria.reason:
        entries = entries.filter(reason=criteria.reason)
    if criteria.exception:
        # A class name or a dotted path, matched on whole path segments only.
        name = criteria.exception
        entries = entries.filter(Q(exception_type=name) | Q(exception_type__endswith=f".{name}"))
    if criteria.status:
        entries = entries.filter(status=criteria.status)
    if criteria.since:
        entries = entries.filter(last_failed_at__gte=criteria.since)
    if criteria.until:
        entries = entries.filter(last_failed_at__lt=criteria.until)
    return entries.order_by("-last_failed_at", "-id")


def dead_letters_stats() -> dict[str, Any]:
    """Counts by task, reason and status, and the age of the oldest pending entry in seconds."""
    entries = DeadLetter.objects.order_by()

    def counts(column: str) -> dict[str, int]:
        return {row[column]: row["n"] for row in entries.values(column).annotate(n=Count("id")).order_by(column)}

    oldest = entries.filter(status=DeadLetterStatus.PENDING).aggregate(oldest=Min("first_failed_at"))["oldest"]
    return {
        "total": entries.count(),
        "by_status": counts("status"),
        "by_reason": counts("reason"),
        "by_task": counts("task_name"),
        "oldest_pending_age_seconds": round((timezone.now() - oldest).total_seconds(), 1) if oldest else None,
    }
