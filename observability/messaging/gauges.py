"""Gauges of the message path, measured by one process per worker (its main process), not by every child: a
heartbeat per consumed queue and the backlog of each queue, with Redis priority sub-queues.

Read at each metric export (every ``OTEL_METRIC_EXPORT_INTERVAL`` ms) from the broker's Redis. Several workers
report the same backlog: dashboards aggregate it with ``max``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from celery import current_app
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from redis.exceptions import RedisError

from observability.redis_client import broker_redis
from observability.telemetry import metric_names as m

__all__ = ["register"]

#: kombu's Redis transport keeps priorities 0-9 in four lists: the queue itself and three suffixed ones.
_PRIORITY_STEPS = (0, 3, 6, 9)
_PRIORITY_SEPARATOR = "\x06\x16"


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


def register(meter: Meter) -> None:
    """Register the gauges on ``meter`` (the worker main process's)."""
    meter.create_observable_gauge(
        m.WORKER_HEARTBEAT, [_heartbeat], unit="s", description="Unix time of the worker's last collection"
    )
    meter.create_observable_gauge(m.QUEUE_BACKLOG, [_backlog], unit="{message}", description="Messages waiting")
