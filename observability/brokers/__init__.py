"""Owns what differs between the brokers the project runs on - Redis and RabbitMQ - one module each behind one small
interface (as kombu's transports and Django's database backends are): how many messages each queue holds and how
long its oldest has waited, what a worker must check before it starts, and what a countdown must respect at
publish. ``current()`` picks the module from ``settings.BROKER`` (``CELERY_BROKER_URL``'s scheme); nothing
outside this package asks which broker runs.

State that is not the broker's - singleton locks, beat's last successes, the lost-run counter, the rate limiter -
lives in the app's own Redis (``REDIS_URL``, ``observability.redis_client.state_redis``) on either broker.

May import: ``observability.redis_client``, ``observability.telemetry``. Imported by the base task and the message
path's gauges and start-up guard.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from django.conf import settings

__all__ = ["Broker", "QueueAge", "QueueDepth", "current", "time_limits"]


class QueueDepth(NamedTuple):
    queue: str
    #: A priority level of the queue (Redis keeps priorities in sub-queues); "0" where there is one.
    priority: str
    messages: int


class QueueAge(NamedTuple):
    queue: str
    priority: str
    #: Seconds since the oldest waiting message was published; 0 for an empty queue.
    seconds: float


class Broker(Protocol):
    #: ``redis`` or ``rabbitmq``.
    name: str

    def backlog(self, queues: Sequence[str]) -> list[QueueDepth] | None:
        """The messages waiting in each queue; None when the broker does not answer."""

    def oldest_message_ages(self, queues: Sequence[str]) -> list[QueueAge] | None:
        """How long each queue's oldest message has waited; None when unknown (or the broker does not answer)."""

    def startup_problems(self, app: Any) -> list[str]:
        """One line per setting or task that would make this broker deliver a message twice; [] when none."""

    def countdown_problem(self, task_name: str, delay_seconds: float, time_limit_seconds: float) -> str | None:
        """Why a publish with this countdown (or ETA) would run twice on this broker; None when it is safe."""

    def countdown(self, delay_seconds: float) -> float:
        """The countdown to publish for a wanted delay (> 0) so that the task runs no sooner than asked."""


def time_limits(app: Any) -> list[tuple[str, Any, float | None]]:
    """(name, task, hard time limit) of every task of the project registered in ``app`` (Celery's built-ins,
    which its workers never run, left out); the limit is None when neither the task nor the app sets one."""
    return [
        (name, task, task.time_limit or app.conf.task_time_limit)
        for name, task in sorted(app.tasks.items())
        if not name.startswith("celery.")
    ]


_brokers: dict[str, Broker] = {}


def current() -> Broker:
    """The broker of ``CELERY_BROKER_URL``."""
    name: str = settings.BROKER
    broker = _brokers.get(name)
    if broker is None:
        if name == "rabbitmq":
            from observability.brokers.rabbitmq import RabbitMQ

            broker = RabbitMQ()
        else:
            from observability.brokers.redis import Redis

            broker = Redis()
        _brokers[name] = broker
    return broker
