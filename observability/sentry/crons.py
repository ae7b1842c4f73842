"""Sentry Crons check-ins around runs of beat entries: in_progress, then ok or error, with an explicit monitor
configuration - schedule from the beat entry, margins and max runtimes from ``MONITORS``."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import sentry_sdk
import structlog
from django.conf import settings
from sentry_sdk.crons import capture_checkin
from sentry_sdk.crons.consts import MonitorStatus

if TYPE_CHECKING:
    from sentry_sdk._types import MonitorConfig, MonitorConfigSchedule, MonitorConfigScheduleUnit

__all__ = ["FAILURE_ISSUE_THRESHOLD", "MONITORS", "CheckInLimits", "monitor_config", "monitor_periodic_run"]

log = structlog.get_logger("observability.sentry")


@dataclass(frozen=True)
class CheckInLimits:
    #: Minutes a run may start after its expected time before Sentry reports it missed.
    checkin_margin: int
    #: Minutes a run may stay in progress before Sentry reports it timed out.
    max_runtime: int


#: Sentry Crons limits of each beat entry (``CELERY_BEAT_SCHEDULE`` keys, which are also the monitor slugs).
#: A margin covers the entry's message ``expires`` - a run may legitimately start that late; later, its
#: message is discarded and the run really is missed - plus a minute of beat and queue jitter. A max runtime
#: covers ``ObservableTask.time_limit`` (5 min: the child is killed, no check-in closes the run) plus a minute.
MONITORS: dict[str, CheckInLimits] = {
    "check-flash-promos-every-minute": CheckInLimits(checkin_margin=2, max_runtime=6),
    "cleanup-expired-promos-every-hour": CheckInLimits(checkin_margin=61, max_runtime=6),
    "process-notification-queue-every-30s": CheckInLimits(checkin_margin=2, max_runtime=6),
    "purge-expired-dead-letters-daily": CheckInLimits(checkin_margin=61, max_runtime=6),
}
#: Consecutive failed check-ins before Sentry opens a monitor issue: a run that failed and whose retry
#: succeeded opens none (a final failure is reported anyway, from its dead letter).
FAILURE_ISSUE_THRESHOLD = 2


def monitor_config(schedule_entry: str) -> MonitorConfig | None:
    """The Sentry Crons configuration of a beat entry; None when the entry or its limits are unknown."""
    entry = settings.CELERY_BEAT_SCHEDULE.get(schedule_entry)
    limits = MONITORS.get(schedule_entry)
    seconds = _interval_seconds(entry["schedule"]) if entry else None
    if limits is None or seconds is None:
        return None
    return {
        "schedule": _sentry_interval(seconds),
        "checkin_margin": limits.checkin_margin,
        "max_runtime": limits.max_runtime,
        "failure_issue_threshold": FAILURE_ISSUE_THRESHOLD,
        "timezone": settings.CELERY_TIMEZONE,
    }


def _interval_seconds(schedule: object) -> float | None:
    run_every = getattr(schedule, "run_every", schedule)  # celery.schedules.schedule wraps a timedelta
    if isinstance(run_every, timedelta):
        return run_every.total_seconds()
    if isinstance(run_every, int | float):
        return float(run_every)
    return None  # a crontab: not used by this project's schedule


_UNITS: tuple[tuple[MonitorConfigScheduleUnit, int], ...] = (("day", 86_400), ("hour", 3600), ("minute", 60))


def _sentry_interval(seconds: float) -> MonitorConfigSchedule:
    for unit, size in _UNITS:
        if seconds >= size and seconds % size == 0:
            return {"type": "interval", "value": int(seconds // size), "unit": unit}
    # Sentry's finest unit is the minute: a 30 s entry is monitored as "at least one run a minute" (each
    # run still checks in; extra check-ins are fine), an uneven one as the next whole minute.
    return {"type": "interval", "value": max(1, math.ceil(seconds / 60)), "unit": "minute"}


@contextmanager
def monitor_periodic_run(schedule_entry: str) -> Iterator[None]:
    """Send Sentry Crons check-ins around one run of the beat entry ``schedule_entry``: in_progress
    before, ok after, error if the block raises (re-raised; a retried run too - ``FAILURE_ISSUE_THRESHOLD``
    keeps one from opening an issue). No-op when Sentry is off or the entry has no monitor."""
    if not sentry_sdk.get_client().is_active():
        yield
        return
    config = monitor_config(schedule_entry)
    if config is None:
        log.warning("sentry.monitor_unknown", schedule_entry=schedule_entry)
        yield
        return
    check_in_id = uuid.uuid4().hex
    capture_checkin(
        monitor_slug=schedule_entry, check_in_id=check_in_id, status=MonitorStatus.IN_PROGRESS, monitor_config=config
    )
    started = time.monotonic()
    status = MonitorStatus.ERROR
    try:
        yield
        status = MonitorStatus.OK
    finally:
        capture_checkin(
            monitor_slug=schedule_entry,
            check_in_id=check_in_id,
            status=status,
            duration=time.monotonic() - started,
            monitor_config=config,
        )
