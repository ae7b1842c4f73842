"""Sentry: one issue per final task failure (reported from its dead letter, never per retry), errors of the
web and beat processes, and Sentry Crons check-ins around runs of beat entries. Off unless ``SENTRY_DSN``.

- ``init_sentry(role=...)`` once per process, and again in each forked pool child: the Django and Celery
  integrations, no PII, no frame variables, task arguments and ``LOG_REDACT_KEYS`` scrubbed everywhere,
  no tracing (OpenTelemetry traces; events carry its trace id).
- The Celery integration's capture inside a task run is dropped (``before_send``): a retried run is not an
  error, and a final failure is reported once, by ``report_dead_letter``, tagged with task, queue, reason
  and dead-letter id, grouped by the dead letter's fingerprint.
- ``monitor_periodic_run`` sends in_progress, then ok or error, with an explicit monitor configuration
  (schedule from the beat entry, margins and max runtimes from ``MONITORS``).
"""

from __future__ import annotations

import math
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import cache, partial
from typing import TYPE_CHECKING, Any

import sentry_sdk
import structlog
from django.conf import settings
from sentry_sdk._types import SENSITIVE_DATA_SUBSTITUTE
from sentry_sdk.crons import capture_checkin
from sentry_sdk.crons.consts import MonitorStatus
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.integrations.django import DjangoIntegration
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.scrubber import DEFAULT_DENYLIST, DEFAULT_PII_DENYLIST
from sentry_sdk.utils import get_default_release

if TYPE_CHECKING:
    from sentry_sdk._types import (
        DataCollectionUserOptions,
        Event,
        Hint,
        MonitorConfig,
        MonitorConfigSchedule,
        MonitorConfigScheduleUnit,
    )

    from observability.dead_letters import Failure

__all__ = ["MONITORS", "CheckInLimits", "init_sentry", "monitor_config", "monitor_periodic_run", "report_dead_letter"]

log = structlog.get_logger(__name__)

#: Keys whose values never leave the process, on top of the SDK's denylists and ``LOG_REDACT_KEYS``: task
#: arguments (Celery's ``celery-job`` extra, protocol headers) and raw broker messages.
SCRUBBED_KEYS = ("args", "kwargs", "argsrepr", "kwargsrepr", "raw_message")


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

# pid of the process Sentry was initialised in: a forked pool child inherits the flag, not a working client.
_initialised_in_pid: int | None = None


def init_sentry(*, role: str) -> None:
    """Turn Sentry on for this process when ``SENTRY_DSN`` is set; otherwise do nothing.

    Idempotent within a process; a forked child (another pid) builds its own client. ``role`` (web, worker,
    beat) becomes the ``role`` tag of every event.
    """
    global _initialised_in_pid
    if not settings.SENTRY_DSN or _initialised_in_pid == os.getpid():
        return
    denylist = frozenset(key.lower() for key in [*DEFAULT_DENYLIST, *DEFAULT_PII_DENYLIST, *SCRUBBED_KEYS,
                                                  *settings.LOG_REDACT_KEYS])  # fmt: skip
    sentry_sdk.init(
        dsn=settings.SENTRY_DSN,
        environment=settings.SENTRY_ENVIRONMENT,
        release=_release(),
        data_collection=_data_collection(),
        # Tracing is OpenTelemetry's; events carry its trace id.
        traces_sample_rate=None,
        # Only the integrations named here (plus the SDK's defaults: logging, atexit, threading...): the
        # auto-enabled ones would add Redis and HTTP spans and breadcrumbs nobody reads.
        auto_enabling_integrations=False,
        integrations=[
            DjangoIntegration(),
            # Beat entries check in from the worker's run (monitor_periodic_run), with explicit margins.
            CeleryIntegration(monitor_beat_tasks=False, propagate_traces=True),
        ],
        # In the worker the Celery and logging integrations only add cost: final failures are reported from
        # dead letters, task exceptions they would capture are dropped, and the benchmark measured them at
        # about a quarter of a task's CPU (docs/performance.md).
        disabled_integrations=[CeleryIntegration(), LoggingIntegration()] if role == "worker" else None,
        before_send=partial(_before_send, denylist=denylist),
    )
    sentry_sdk.get_global_scope().set_tag("role", role)
    _initialised_in_pid = os.getpid()
    log.info("sentry.enabled", role=role, environment=settings.SENTRY_ENVIRONMENT)


@cache
def _release() -> str | None:
    """The SDK's own default release (``SENTRY_RELEASE``, else the git commit, ...), found once per process tree:
    the worker's main process finds it before the pool forks, so a pool child does not run ``git rev-parse``
    again each time it starts (4 ms of its start-up)."""
    return get_default_release()


def _data_collection() -> DataCollectionUserOptions:
    """``send_default_pii=False`` as the SDK defines it, stated explicitly (sentry-sdk 2.75 deprecates that
    option for this one), without frame variables, and with ``LOG_REDACT_KEYS`` filtered from headers,
    cookies and query strings (and, by ``_before_send``, from request bodies)."""
    terms = ["forwarded", "-ip", "remote-", "via", "-user", *settings.LOG_REDACT_KEYS]
    return {
        "user_info": False,
        "cookies": {"mode": "denylist", "terms": terms},
        "http_headers": {"request": {"mode": "denylist", "terms": terms}},
        "url_query_params": {"mode": "denylist", "terms": terms},
        "http_bodies": ["incoming_request"],
        "graphql": {"document": False, "variables": False},
        "gen_ai": {"inputs": False, "outputs": False},
        "database_query_data": False,
        # Celery's task arguments (the integration's ``celery-job`` extra).
        "queues": False,
        # A task frame's locals are its arguments, whatever their names: no denylist can catch them.
        "stack_frame_variables": False,
    }


def _before_send(event: Event, hint: Hint, *, denylist: frozenset[str]) -> Event | None:
    exceptions = event.get("exception", {}).get("values", [])
    if any((value.get("mechanism") or {}).get("type") == "celery" for value in exceptions):
        # Captured by the Celery integration inside a run. Reported once, from the dead letter, if final.
        return None
    # An explicit data_collection turns the SDK's own event scrubber off; this one covers every part of the
    # event (request, extra, contexts, tags, breadcrumbs...) but the SDK's own metadata.
    for key, value in event.items():
        if key not in _UNSCRUBBED:
            _scrub(value, denylist)
    return event


_UNSCRUBBED = frozenset({"_meta", "sdk", "modules"})


def _scrub(value: object, denylist: frozenset[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and key.lower() in denylist:
                value[key] = SENSITIVE_DATA_SUBSTITUTE
            else:
                _scrub(item, denylist)
    elif isinstance(value, list):
        for item in value:
            _scrub(item, denylist)


def report_dead_letter(failure: Failure, dead_letter_id: int | None) -> None:
    """Report a final failure (called once per dead letter, in the worker's main process).

    One error event titled ``<ExceptionType>: <message>``, with the failed run's frames, tags ``task``,
    ``queue``, ``reason``, ``dead_letter_id`` (``deferred`` when Postgres was down), ``exception_type``,
    fingerprint ``["dead-letter", failure.fingerprint]`` and the message's trace id. Never its arguments,
    headers or raw message. Non-blocking (the SDK sends from its own thread) and never raises.
    """
    if not sentry_sdk.get_client().is_active():
        return
    try:
        with sentry_sdk.isolation_scope() as scope:
            # The main process's breadcrumbs belong to the other messages it handled.
            scope.clear_breadcrumbs()
            sentry_sdk.capture_event(_dead_letter_event(failure, dead_letter_id))
    except Exception:  # reporting is best effort: it must never stop the message's acknowledgement
        log.exception("sentry.report_failed", dead_letter_id=dead_letter_id, task_id=failure.task_id)


def _dead_letter_event(failure: Failure, dead_letter_id: int | None) -> Event:
    module, _, name = failure.exception_type.rpartition(".")
    exception: dict[str, Any] = {
        "type": name or "DeadLetter",
        "value": failure.exception_message or failure.reason,
        "mechanism": {"type": "dead_letter", "handled": True},
    }
    if module:
        exception["module"] = module
    frames = _frames(failure.traceback)
    if frames:
        exception["stacktrace"] = {"frames": frames}
    tags = {
        "task": failure.task_name,
        "queue": failure.queue,
        "reason": failure.reason,
        "dead_letter_id": "deferred" if dead_letter_id is None else str(dead_letter_id),
        "exception_type": failure.exception_type,
        "celery_task_id": failure.task_id,
    }
    return {
        "level": "error",
        "logger": "observability.dead_letters",
        "transaction": failure.task_name,
        "exception": {"values": [exception]},
        "tags": {key: value for key, value in tags.items() if value},
        "fingerprint": ["dead-letter", failure.fingerprint],
        "contexts": {
            # Without a producer's trace id, a fresh one: not the trace of the worker's main process.
            "trace": {"trace_id": failure.trace_id or uuid.uuid4().hex, "span_id": uuid.uuid4().hex[16:]},
            "dead_letter": {
                "id": dead_letter_id,
                "task_id": failure.task_id,
                "retries": failure.retries,
                "delivery_count": failure.delivery_count,
                "failed_at": failure.failed_at,
            },
        },
    }


_FRAME = re.compile(r'^  File "(?P<path>[^"]+)", line (?P<lineno>\d+), in (?P<function>.+)$')


def _frames(traceback: str) -> list[dict[str, Any]]:
    """Sentry frames (oldest first) of the last exception of a formatted Python traceback."""
    frames: list[dict[str, Any]] = []
    for line in traceback.rpartition("Traceback (most recent call last):")[2].splitlines():
        match = _FRAME.match(line)
        if match:
            path = match["path"]
            in_app = path.startswith(str(settings.BASE_DIR)) and "-packages/" not in path
            frames.append({"abs_path": path, "filename": path, "lineno": int(match["lineno"]),
                           "function": match["function"], "in_app": in_app})  # fmt: skip
        elif frames and line.startswith("    ") and "context_line" not in frames[-1] and line.strip(" ^~"):
            frames[-1]["context_line"] = line.strip()
    return frames


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
