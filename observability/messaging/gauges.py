"""Gauges of the message path, measured by one process per worker (its main process), not by every child:
whether the worker is alive and consuming - a heartbeat and the time of the last message received per consumed
queue, the tasks it runs, reserves and holds for a countdown - and per queue, with Redis priority sub-queues,
the backlog and the age of the oldest waiting message.

Read at each metric export (every ``OTEL_METRIC_EXPORT_INTERVAL`` ms): the queues from the broker
(``observability.brokers``: on Redis one LLEN and one LINDEX per list; on RabbitMQ a passive declare per queue,
and no oldest-message age), the rest from memory. Several workers report the same queues: dashboards
aggregate those with ``max``.

The heartbeat is the export thread's clock, so it says the process lives, not that it consumes: a consumer
stuck on a frozen broker connection or a blocked event loop keeps it fresh. ``message_received`` - called by
the consumer for every task message, in the main process - is what says it consumes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from celery import current_app
from celery.worker import state as worker_state
from kombu.message import Message
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from observability import brokers
from observability.delivery import delivery_queue
from observability.telemetry import metric_names as m

__all__ = ["message_received", "register"]

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


def message_received(message: Message) -> None:
    """Record that a task message of a consumed queue arrived now. A dict write: costs ~0.1 us per message.

    The queue is the message's routing key, as the task metrics' ``queue`` label (the project routes each queue
    by its own name); a routing key that names no consumed queue is not recorded, so producers cannot add series.
    """
    queue = delivery_queue(message.delivery_info)
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
    depths = brokers.current().backlog(_queues())
    return [Observation(d.messages, {"queue": d.queue, "priority": d.priority}) for d in depths or ()]


def _oldest_message_age(options: CallbackOptions) -> Iterable[Observation]:
    # 0 for an empty queue, never no observation: the Collector would keep serving the last age for minutes.
    ages = brokers.current().oldest_message_ages(_queues())
    return [Observation(a.seconds, {"queue": a.queue, "priority": a.priority}) for a in ages or ()]


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
