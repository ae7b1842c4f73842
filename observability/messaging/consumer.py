"""``DeadLetteringConsumer``: the worker's consumer, with a dead letter for every message Celery would
otherwise drop with one log line - an unregistered task, a message without task headers, a body that
cannot be decoded (celery#6918). The entry is written before the message is acknowledged; if it can be
neither written nor deferred, the message stays unacknowledged and comes back later.

It also records the arrival of every task message (``gauges.message_received``): the worker's proof that it
consumes, which its heartbeat is not.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from celery.worker.consumer import Consumer
from celery.worker.consumer import consumer as celery_consumer
from kombu.message import Message
from vine import promise

from observability import telemetry
from observability.deadletters import services as dead_letters
from observability.deadletters.models import DeadLetterReason
from observability.delivery import delivery_exchange, delivery_queue
from observability.failure import Failure
from observability.messaging.gauges import message_received

__all__ = ["DeadLetteringConsumer", "failure_from_message"]


def failure_from_message(
    message: Message, reason: DeadLetterReason, error: str, exception_type: str, *, raw: str | None = None
) -> Failure:
    """The failure of ``message``; ``raw``, when given, is stored as its body instead of the decoded one."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    delivery_info = message.delivery_info or {}
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    if raw is None:
        raw = message.body.decode("utf-8", "replace") if isinstance(message.body, bytes) else str(message.body)
        try:
            body = json.loads(raw)
            if isinstance(body, list) and len(body) == 3 and isinstance(body[0], list) and isinstance(body[1], dict):
                args, kwargs = body[0], body[1]
        except ValueError:
            pass
    return Failure(
        reason=reason.value,
        task_name=str(headers.get("task") or ""),
        task_id=str(headers.get("id") or ""),
        args=args,
        kwargs=kwargs,
        headers=json.loads(json.dumps(headers, default=str)),
        queue=delivery_queue(delivery_info),
        exchange=delivery_exchange(delivery_info),
        routing_key=delivery_queue(delivery_info),
        raw_message="" if args or kwargs else raw[:100_000],
        exception_type=exception_type,
        exception_message=error[:10_000],
    )


def _record(message: Message, reason: DeadLetterReason, error: str, exception_type: str) -> bool:
    failure = failure_from_message(message, reason, error, exception_type)
    if not dead_letters.record_or_report(failure):
        return False
    telemetry.task_outcome_in_main(failure.task_name, failure.queue, "rejected", exception_type.rsplit(".")[-1], None)
    return True


# Celery's handlers below log that the message "has been ignored and discarded" (or "deleted") and then
# reject it. Called after the message was recorded as a dead letter, that line contradicts our
# `dead_letter.recorded` one: it is dropped while Celery's handler runs for a recorded message, and the rest
# of the handler (reject, the failure stored for its task id, the task-failed event) runs as Celery wrote it.
# (getattr: celery-types does not declare these module constants; a renamed one fails at import.)
_DISCARDED_LINES: frozenset[str] = frozenset(
    getattr(celery_consumer, name) for name in ("UNKNOWN_TASK_ERROR", "INVALID_TASK_ERROR", "UNKNOWN_FORMAT")
)
_recorded: ContextVar[bool] = ContextVar("dead_letter_recorded", default=False)


class _RecordedMessageFilter(logging.Filter):
    """Drops Celery's "discarded" line about a message this consumer has just recorded as a dead letter."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_recorded.get() and record.msg in _DISCARDED_LINES)


_consumer_log = logging.getLogger(celery_consumer.__name__)
if not any(isinstance(f, _RecordedMessageFilter) for f in _consumer_log.filters):
    _consumer_log.addFilter(_RecordedMessageFilter())


@contextmanager
def _as_recorded() -> Iterator[None]:
    token = _recorded.set(True)
    try:
        yield
    finally:
        _recorded.reset(token)


class DeadLetteringConsumer(Consumer):
    def create_task_handler(self, promise: Any = promise) -> Callable[[Message], Any]:
        # Every task message passes here first, whatever becomes of it (run, dead-lettered, rejected).
        handle = super().create_task_handler(promise)

        def on_task_received(message: Message) -> Any:
            message_received(message)
            return handle(message)

        return on_task_received

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        if _record(message, DeadLetterReason.UNREGISTERED_TASK, str(exc), "celery.exceptions.NotRegistered"):
            with _as_recorded():
                super().on_unknown_task(body, message, exc)

    def on_unknown_message(self, body: Any, message: Message) -> None:
        error = "message has no task headers (not a Celery task message)"
        if _record(message, DeadLetterReason.UNDECODABLE_MESSAGE, error, "kombu.exceptions.MessageStateError"):
            with _as_recorded():
                super().on_unknown_message(body, message)

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        if _record(message, DeadLetterReason.UNDECODABLE_MESSAGE, str(exc), "celery.exceptions.InvalidTaskError"):
            with _as_recorded():
                super().on_invalid_task(body, message, exc)

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        exception_type = f"{type(exc).__module__}.{type(exc).__qualname__}"
        if _record(message, DeadLetterReason.UNDECODABLE_MESSAGE, str(exc), exception_type):
            super().on_decode_error(message, exc)
