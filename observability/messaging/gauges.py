"""Gauges of the message path, measured by one process per worker (its main process), not by every child:
whether the worker is alive and consuming - a heartbeat and the time of the last message received per consumed
queue, the tasks it runs, reserves and holds for a countdown - and per queue, with Redis priority sub-queues,
the backlog and the age of the oldest waiting message.

Read at each metric export (every ``OTEL_METRIC_EXPORT_INTERVAL`` ms): the queues from the broker's Redis (one
LLEN and one LINDEX per list), the rest from memory. Several workers report the same queues: dashboards
aggregate those with ``max``.

The heartbeat is the export thread's clock, so it says the process lives, not that it consumes: a consumer
stuck on a frozen broker connection or a blocked event loop keeps it fresh. ``message_received`` - called by
the consumer for every task message, in the main process - is what says it consumes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from celery import current_app
from celery.worker import state as worker_state
from kombu.message import Message
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from redis.exceptions import RedisError

from observability.redis_client import broker_redis
from observability.telemetry import PUBLISHED_AT_HEADER
from observability.telemetry import metric_names as m

__all__ = ["message_received", "register"]

#: kombu's Redis transport keeps priorities 0-9 in four lists: the queue itself and three suffixed ones.
_PRIORITY_STEPS = (0, 3, 6, 9)
_PRIORITY_SEPARATOR = "\x06\x16"

#: Consumed queue -> unix time of its last task message received; the worker's start until the first one.
#: Written by the consumer (main thread), read by the export thread: single dict operations, atomic in CPython.
_last_received: dict[str, float] = {}


def _queues() -> list[str]:
    names = {current_app.conf.task_default_queue, *(q.name for q in current_app.amqp.queues.values())}
    return sorted(names)


def _consumed_queues() -> list[str]:
    # ``-Q`` narrows what a worker consumes; without it a worker consumes every declared queue.
    consumed = current_app.amqp.queues.consume_from
    return sorted(consumed) if consumed else _queues()


def _lists() -> list[tuple[str, int, str]]:
    """(queue, priority step, Redis key) of every list of every declared queue."""
    return [
        (queue, step, queue if step == 0 else f"{queue}{_PRIORITY_SEPARATOR}{step}")
        for queue in _queues()
        for step in _PRIORITY_STEPS
    ]


def message_received(message: Message) -> None:
    """Record that a task message of a consumed queue arrived now. A dict write: costs ~0.1 us per message.

    The queue is the message's routing key, as the task metrics' ``queue`` label (the project routes each queue
    by its own name); a routing key that names no consumed queue is not recorded, so producers cannot add series.
    """
    queue = (message.delivery_info or {}).get("routing_key")
    if queue in _last_received:
        _last_received[queue] = time.time()


def _heartbeat(options: CallbackOptions) -> Iterable[Observation]:
    # A timestamp rather than a constant 1: a stopped worker's last sample lingers in the pipeline
    # (the Collector keeps it for its metric_expiration), but its age keeps growing, so "up" is computable.
    now = time.time()
    return [Observation(now, {"queue": queue}) for queue in _consumed_queues()]


def _last_received_times(options: CallbackOptions) -> Iterable[Observation]:
    # A queue added at run time (``control add_consumer``) counts from its first collection.
    now = time.time()
    return [Observation(_last_received.setdefault(queue, now), {"queue": queue}) for queue in _consumed_queues()]


def _tasks(options: CallbackOptions) -> Iterable[Observation]:
    # Celery's own bookkeeping in the main process, as `inspect active/reserved/scheduled` reports it: a request
    # is reserved once received, active once a pool child took it (and still in the reserved set), scheduled
    # while held for its countdown or ETA. Lengths only: iterating the sets here could race the consumer.
    active = len(worker_state.active_requests)
    return [
        Observation(active, {"state": "active"}),
        Observation(max(len(worker_state.reserved_requests) - active, 0), {"state": "reserved"}),
        Observation(len(worker_state.scheduled_requests), {"state": "scheduled"}),  # type: ignore[attr-defined]  # not in celery-types
    ]


def _backlog(options: CallbackOptions) -> Iterable[Observation]:
    lists = _lists()
    try:
        pipe = broker_redis().pipeline(transaction=False)
        for _, _, key in lists:
            pipe.llen(key)
        lengths = pipe.execute()
    except RedisError:
        return []
    return [
        Observation(int(length), {"queue": queue, "priority": str(step)})
        for (queue, step, _), length in zip(lists, lengths, strict=True)
    ]


def _published_at(envelope: bytes | str | None) -> float | None:
    """The publish time in a kombu envelope's headers; None for an empty list or a message without one."""
    if envelope is None:
        return None
    try:
        headers = json.loads(envelope).get("headers") or {}
        return float(headers[PUBLISHED_AT_HEADER])
    except (ValueError, TypeError, KeyError, AttributeError):
        return None  # not a message of this project's producers; the transport dead-letters what is malformed


def _oldest_message_age(options: CallbackOptions) -> Iterable[Observation]:
    # kombu LPUSHes and BRPOP takes from the tail: a list's oldest message is its last element. 0 for an empty
    # list, never no observation: the Collector would keep serving the last age for minutes.
    lists = _lists()
    try:
        pipe = broker_redis().pipeline(transaction=False)
        for _, _, key in lists:
            pipe.lindex(key, -1)
        tails = pipe.execute()
    except RedisError:
        return []
    now = time.time()
    observations = []
    for (queue, step, _), tail in zip(lists, tails, strict=True):
        published_at = _published_at(tail)
        age = 0.0 if published_at is None else max(now - published_at, 0.0)
        observations.append(Observation(age, {"queue": queue, "priority": str(step)}))
    return observations


def register(meter: Meter) -> None:
    """Register the gauges on ``meter`` (the worker main process's)."""
    started = time.time()
    for queue in _consumed_queues():
        _last_received.setdefault(queue, started)
    meter.create_observable_gauge(
        m.WORKER_HEARTBEAT, [_heartbeat], unit="s", description="Unix time of the worker's last collection"
    )
    meter.create_observable_gauge(
        m.WORKER_LAST_RECEIVED,
        [_last_received_times],
        unit="s",
        description="Unix time the worker last received a task message from the queue (its start before any)",
    )
    meter.create_observable_gauge(
        m.WORKER_TASKS, [_tasks], unit="{task}", description="Tasks the worker runs, reserves or holds for later"
    )
    meter.create_observable_gauge(m.QUEUE_BACKLOG, [_backlog], unit="{message}", description="Messages waiting")
    meter.create_observable_gauge(
        m.QUEUE_OLDEST_MESSAGE_AGE,
        [_oldest_message_age],
        unit="s",
        description="Seconds the oldest waiting message has waited since its publish",
    )
