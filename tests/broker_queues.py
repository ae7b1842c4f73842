"""The messages waiting in a queue of the run's broker, read the same way on Redis and on RabbitMQ, for tests that
assert what a producer published (``dlq replay``, routing, beat's ticks) without a worker consuming it.

On Redis a queue is a list of that name whose oldest message is its tail: read without taking anything. On
RabbitMQ the count is a passive declare's, and the messages are fetched unacknowledged on a channel of their own
and given back when it closes (each fetch counts as a delivery on a quorum queue: read a queue a few times, not
in a loop).
"""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import redis
from amqp.exceptions import NotFound
from kombu import Connection

__all__ = ["QueueReader"]


class QueueReader:
    def __init__(self, url: str) -> None:
        self.url = url
        self.rabbitmq = url.startswith(("amqp:", "amqps:"))

    def depth(self, queue: str) -> int:
        """How many messages wait in ``queue`` (0 when it does not exist)."""
        if not self.rabbitmq:
            with redis.Redis.from_url(self.url) as client:
                return int(client.llen(queue))
        with Connection(self.url) as connection:
            channel: Any = connection.channel()
            try:
                return int(channel.queue_declare(queue, passive=True).message_count)
            except NotFound:
                return 0

    def messages(self, queue: str) -> list[dict[str, Any]]:
        """The task messages waiting in ``queue``, oldest first: ``headers``, ``properties``, the body decoded as
        ``decoded_body`` and its size in bytes as ``body_size``; none is taken from the queue."""
        if not self.rabbitmq:
            with redis.Redis.from_url(self.url) as client:
                raw: list[bytes] = client.lrange(queue, 0, -1)
            envelopes = [json.loads(message) for message in reversed(raw)]
            bodies = [base64.b64decode(e["body"]) for e in envelopes]
            return [
                {"headers": e["headers"], "properties": e["properties"], "decoded_body": json.loads(body),
                 "body_size": len(body)}
                for e, body in zip(envelopes, bodies, strict=True)
            ]  # fmt: skip
        found = []
        with Connection(self.url) as connection:
            channel: Any = connection.channel()
            try:
                while (message := channel.basic_get(queue, no_ack=False)) is not None:
                    properties = dict(message.properties)
                    headers = properties.pop("application_headers", None) or {}
                    route = message.delivery_info
                    properties["delivery_info"] = {"exchange": route["exchange"], "routing_key": route["routing_key"]}
                    found.append(
                        {"headers": headers, "properties": properties, "decoded_body": json.loads(message.body),
                         "body_size": len(message.body)}
                    )  # fmt: skip
            except NotFound:
                found = []
            if channel.is_open:
                channel.close()  # gives back every message fetched, unacknowledged
        return found

    def delete(self, *queues: str) -> None:
        """Remove ``queues`` and what waits in them (a test's own queues, at its end)."""
        if not self.rabbitmq:
            with redis.Redis.from_url(self.url) as client:
                if queues:
                    client.delete(*queues)
            return
        with Connection(self.url) as connection:
            for queue in queues:
                channel: Any = connection.channel()
                with contextlib.suppress(NotFound):
                    channel.queue_delete(queue)
                if channel.is_open:
                    channel.close()
