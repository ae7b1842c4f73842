"""RabbitMQ as the broker: quorum queues behind topic exchanges (``marketplace/settings/broker.py``), countdowns
and ETAs waiting in the broker through Celery's native delayed delivery, publisher confirms. A delivery not
acknowledged within the server's ``consumer_timeout`` closes the worker's channel and requeues what it held: every
hard time limit must stay below it.

The backlog is each queue's message count from a passive declare, on one connection of this module's, reopened
after an error. RabbitMQ does not show a queue's oldest message without consuming it (its management API only
samples rates), so the oldest-message age is not reported here: no series, rather than a wrong one.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any

from amqp.exceptions import AMQPError, ChannelError
from celery import current_app
from django.conf import settings
from kombu import Connection
from kombu.exceptions import OperationalError

from observability.brokers import QueueAge, QueueDepth, time_limits

__all__ = ["RabbitMQ"]

#: A gauge read must not hold the export thread: a broker that does not answer fails the read in this long.
_TIMEOUT_SECONDS = 2.0


class RabbitMQ:
    name = "rabbitmq"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connection: Connection | None = None

    def backlog(self, queues: Sequence[str]) -> list[QueueDepth] | None:
        with self._lock:
            connection = self._connection
            try:
                if connection is None:
                    connection = self._connection = Connection(
                        current_app.conf.broker_url,
                        connect_timeout=_TIMEOUT_SECONDS,
                        transport_options={"read_timeout": _TIMEOUT_SECONDS, "write_timeout": _TIMEOUT_SECONDS},
                    )
                    connection.ensure_connection(max_retries=1)
                return self._depths(connection, queues)
            except (OSError, OperationalError, AMQPError):
                self._close()
                return None

    def _depths(self, connection: Connection, queues: Sequence[str]) -> list[QueueDepth]:
        depths = []
        channel: Any = connection.channel()  # py-amqp's Channel (kombu types it as StdChannel)
        try:
            for queue in queues:
                try:
                    _, messages, _ = channel.queue_declare(queue=queue, passive=True)
                except ChannelError:
                    # Not declared yet (no worker has consumed it): 404, which closes the channel.
                    channel = connection.channel()
                    continue
                depths.append(QueueDepth(queue, "0", int(messages)))
        finally:
            channel.close()
        return depths

    def oldest_message_ages(self, queues: Sequence[str]) -> list[QueueAge] | None:
        return None

    def startup_problems(self, app: Any) -> list[str]:
        limit = settings.CELERY_BROKER_CONSUMER_TIMEOUT_SECONDS
        problems = []
        for name, _, time_limit in time_limits(app):
            if time_limit is None:
                problems.append(f"{name}: no hard time limit; set time_limit below the consumer timeout ({limit} s)")
            elif time_limit >= limit:
                problems.append(f"{name}: time_limit {time_limit} s reaches the consumer timeout ({limit} s)")
        return [f"{problem} (CELERY_BROKER_CONSUMER_TIMEOUT_SECONDS)" for problem in problems]

    def countdown_problem(self, task_name: str, delay_seconds: float, time_limit_seconds: float) -> str | None:
        return None  # the countdown waits in the broker's delayed-delivery exchanges, not in a worker

    def countdown(self, delay_seconds: float) -> float:
        # Native delayed delivery routes by whole seconds: Celery truncates the delay, the message arrives up to a
        # second early, and the worker holds the rest against the message's ETA header (never early: bench
        # --only countdown). Under a second it truncates to 0, which kombu refuses ("countdown must be a positive
        # number", the publish lost): such a delay (a retry's jittered backoff) waits the one second that routes.
        return max(delay_seconds, 1.0)

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(OSError, AMQPError):  # already gone
                connection.release()
