"""The broker and the client as the messaging spans name them: ``messaging.system``, ``server.address`` and
``server.port`` (from the broker URL, never its credentials) and ``messaging.client.id``.

The one place a broker change sets what the spans say: OpenTelemetry's messaging conventions require the
well-known ``messaging.system`` value where one applies (``rabbitmq`` on RabbitMQ, ``aws_sqs`` on SQS); Redis has
none, so spans there say ``celery``, as opentelemetry-instrumentation-celery does.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["Broker", "broker_of", "client_id"]

#: kombu transport scheme -> ``messaging.system``. A scheme not listed here (Redis, memory) says ``celery``.
MESSAGING_SYSTEMS = {
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "pyamqp": "rabbitmq",
    "librabbitmq": "rabbitmq",
    "sqs": "aws_sqs",
}
#: Ports of the schemes whose URL may leave it out.
DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "amqp": 5672, "pyamqp": 5672, "amqps": 5671}


@dataclass(frozen=True)
class Broker:
    system: str
    address: str | None
    port: int | None

    def attributes(self) -> dict[str, str | int]:
        """The span attributes of this broker: those that are known."""
        attributes: dict[str, str | int] = {"messaging.system": self.system}
        if self.address:
            attributes["server.address"] = self.address
        if self.port is not None:
            attributes["server.port"] = self.port
        return attributes


def broker_of(url: str) -> Broker:
    """The broker of a Celery broker URL (the first of a failover list ``a;b``); user and password are never read
    into it."""
    first = url.split(";", 1)[0].strip()
    parts = urlsplit(first)
    scheme = parts.scheme.split("+", 1)[0].lower()
    try:
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:  # a port that is not a number: leave it out rather than fail telemetry set-up
        port = None
    return Broker(MESSAGING_SYSTEMS.get(scheme, "celery"), parts.hostname, port if parts.hostname else None)


def client_id(role: str, nodename: str | None = None) -> str:
    """``messaging.client.id`` of this process: a worker's node name (``celery@host``, as ``celery inspect`` and
    Flower show it) in the worker and its pool children; ``<role>.<pid>@<host>`` in other producers."""
    return nodename or f"{role}.{os.getpid()}@{socket.gethostname()}"
