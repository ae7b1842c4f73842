"""The two tasks that keep dead letters: deferred recording (a failure written when Postgres is back) and
retention (the daily purge of entries older than ``DEAD_LETTER_RETENTION_DAYS``).

Discovered by the Celery app (``marketplace.celery``); their names are stable - messages in flight and the
beat schedule carry them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from observability.errors import TransientError
from observability.task import ObservableTask

__all__ = ["purge_expired_dead_letters", "record_dead_letter"]


@shared_task(
    base=ObservableTask,
    name="observability.record_dead_letter",
    max_retries=None,
    retry_backoff_max_seconds=60.0,
    ignore_result=True,  # nothing reads it: the dead letter itself is the record
)
def record_dead_letter(failure: dict[str, Any]) -> dict[str, int]:
    """Write a dead letter that could not be written when it happened (Postgres was down). Retries -
    forever, with backoff capped at a minute - until the database takes it, whatever it answers."""
    from django.db import DatabaseError, DataError, IntegrityError

    from observability.deadletters.services import dead_letter_record_deferred
    from observability.failure import Failure

    try:
        return {"dead_letter_id": dead_letter_record_deferred(Failure(**failure)).pk}
    except (DataError, IntegrityError):
        raise  # this failure's own data: dead-lettered, this task's entry keeps it in its args
    except DatabaseError as exc:
        # Not only "unreachable": a table missing after a deploy without `migrate` too. Dead-lettered, this task
        # would be deferred again (its own entry cannot be written either), wrapping the failure in a new one
        # every 5 s, growing each time.
        raise TransientError(f"the deferred dead letter could not be written: {exc}") from exc


@shared_task(base=ObservableTask, singleton=True)
def purge_expired_dead_letters() -> dict[str, int]:
    """Delete dead letters last failed more than ``DEAD_LETTER_RETENTION_DAYS`` ago, counting and logging
    what goes (never silently)."""
    from observability.deadletters.models import DeadLetter
    from observability.deadletters.services import dead_letters_purge

    cutoff = timezone.now() - timedelta(days=settings.DEAD_LETTER_RETENTION_DAYS)
    expired = DeadLetter.objects.filter(last_failed_at__lt=cutoff)
    return dead_letters_purge(expired, reason=f"retention ({settings.DEAD_LETTER_RETENTION_DAYS} days)")
