"""``ObservedScheduler``: beat's scheduler (Celery's ``PersistentScheduler``), with a span and a count per send.

Each due entry beat sends runs in an INTERNAL span ``beat <entry>`` made current, so the publish's PRODUCER span
(``observability.publishing``) is its child and the consumer span the worker makes is their grandchild: a beat
tick's trace starts at beat. ``celery.beat.ticks{entry, outcome}`` counts the sends (``sent``, or ``failed``
when the publish raised: beat logs "Message Error" and tries again at the entry's next run).

A project that runs another scheduler (django-celery-beat's ``DatabaseScheduler``) keeps both by mixing
``ObservedSchedulerMixin`` into it.
"""

from __future__ import annotations

from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry
from opentelemetry.trace import SpanKind, Status, StatusCode

from observability import telemetry
from observability.logs.redaction import mask_url_credentials
from observability.telemetry.task_spans import qualified_type

__all__ = ["ObservedScheduler", "ObservedSchedulerMixin"]


class ObservedSchedulerMixin:
    """Wraps ``Scheduler.apply_async`` (what ``apply_entry`` calls for each due entry) in the entry's span and
    counts its outcome."""

    def apply_async(self, entry: ScheduleEntry, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        name = str(entry.name or entry.task)
        attributes = {"celery.beat.entry": name, "celery.task.name": entry.task}
        tracer = telemetry.current().tracer
        with tracer.start_as_current_span(
            f"beat {name}", kind=SpanKind.INTERNAL, attributes=attributes, record_exception=False,
            set_status_on_exception=False,
        ) as span:  # fmt: skip
            try:
                result = super().apply_async(entry, producer, advance, **kwargs)  # type: ignore[misc]
            except Exception as exc:
                # Celery re-raises the publish's error as a SchedulingError: the span names the original.
                cause = exc.__context__ or exc
                span.set_attribute("error.type", qualified_type(cause))
                span.set_status(Status(StatusCode.ERROR, mask_url_credentials(str(cause))[:200]))
                telemetry.beat_ticked(name, "failed")
                raise
        telemetry.beat_ticked(name, "sent")
        return result


class ObservedScheduler(ObservedSchedulerMixin, PersistentScheduler):
    """Celery's default scheduler (its schedule in ``CELERY_BEAT_SCHEDULE_FILENAME``), observed."""
