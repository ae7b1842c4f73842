"""Gauges measured by one process per worker (its main process), not by every child: a heartbeat per consumed
queue, queue backlog with Redis priority sub-queues, dead-letter depth and age, and each beat entry's last
successful run and interval.

They are read at each metric export (every ``OTEL_METRIC_EXPORT_INTERVAL`` ms) from Redis and Postgres.
Several workers report the same values: dashboards aggregate them with ``max``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import timedelta

import structlog
from celery import current_app
from django.db import DatabaseError, close_old_connections
from django.db.models import Count, Min
from django.utils import timezone
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from redis.exceptions import RedisError

from observability import metric_names as m
from observability.models import DeadLetter, DeadLetterStatus
from observability.redis_client import broker_redis

__all__ = ["BEAT_LAST_SUCCESS_KEY", "record_beat_success", "register"]

#: Redis hash: beat entry -> unix time of its last successful run (written by the run's worker child).
BEAT_LAST_SUCCESS_KEY = "observability:beat:last_success"
#: kombu's Redis transport keeps priorities 0-9 in four lists: the queue itself and three suffixed ones.
_PRIORITY_STEPS = (0, 3, 6, 9)
_PRIORITY_SEPARATOR = "\x06\x16"


def record_beat_success(entry: str) -> None:
    """Note that the beat entry ``entry`` just ran successfully (one HSET per periodic run); best effort."""
    try:
        broker_redis().hset(BEAT_LAST_SUCCESS_KEY, entry, str(time.time()))
    except RedisError as exc:
        structlog.get_logger(__name__).warning("beat_success.unrecorded", entry=entry, error=str(exc))


def _queues() -> list[str]:
    names = {current_app.conf.task_default_queue, *(q.name for q in current_app.amqp.queues.values())}
    return sorted(names)


def _consumed_queues() -> list[str]:
    # ``-Q`` narrows what a worker consumes; without it a worker consumes every declared queue.
    consumed = current_app.amqp.queues.consume_from
    return sorted(consumed) if consumed else _queues()


def _heartbeat(options: CallbackOptions) -> Iterable[Observation]:
    # A timestamp rather than a constant 1: a stopped worker's last sample lingers in the pipeline
    # (the Collector keeps it for its metric_expiration), but its age keeps growing, so "up" is computable.
    now = time.time()
    return [Observation(now, {"queue": queue}) for queue in _consumed_queues()]


def _beat_intervals(options: CallbackOptions) -> Iterable[Observation]:
    # Exported beside the last success so that a "missed N intervals" alert needs no per-entry constant.
    observations = []
    for entry, spec in current_app.conf.beat_schedule.items():
        interval = getattr(spec["schedule"], "run_every", spec["schedule"])
        seconds = interval.total_seconds() if isinstance(interval, timedelta) else interval
        if isinstance(seconds, int | float):
            observations.append(Observation(float(seconds), {"entry": entry}))
    return observations


def _backlog(options: CallbackOptions) -> Iterable[Observation]:
    try:
        pipe = broker_redis().pipeline(transaction=False)
        keys = [(queue, step) for queue in _queues() for step in _PRIORITY_STEPS]
        for queue, step in keys:
            pipe.llen(queue if step == 0 else f"{queue}{_PRIORITY_SEPARATOR}{step}")
        lengths = pipe.execute()
    except RedisError:
        return []
    return [
        Observation(int(length), {"queue": queue, "priority": str(step)})
        for (queue, step), length in zip(keys, lengths, strict=True)
    ]


def _beat_last_success(options: CallbackOptions) -> Iterable[Observation]:
    try:
        values = broker_redis().hgetall(BEAT_LAST_SUCCESS_KEY)
    except RedisError:
        return []
    return [Observation(float(ts), {"entry": entry.decode()}) for entry, ts in values.items()]  # type: ignore[union-attr]


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
    """Register the gauges on ``meter`` (the worker main process's)."""
    meter.create_observable_gauge(
        m.WORKER_HEARTBEAT, [_heartbeat], unit="s", description="Unix time of the worker's last collection"
    )
    meter.create_observable_gauge(m.QUEUE_BACKLOG, [_backlog], unit="{message}", description="Messages waiting")
    meter.create_observable_gauge(
        m.BEAT_LAST_SUCCESS, [_beat_last_success], unit="s", description="Unix time of the last successful run"
    )
    meter.create_observable_gauge(
        m.BEAT_INTERVAL, [_beat_intervals], unit="s", description="Interval of each interval beat entry"
    )
    meter.create_observable_gauge(
        m.DEAD_LETTERS_PENDING, [_dead_letters_pending], unit="{entry}", description="Pending dead letters"
    )
    meter.create_observable_gauge(
        m.DEAD_LETTERS_OLDEST_PENDING_AGE, [_dead_letters_oldest_age], unit="s", description="Oldest pending age"
    )
