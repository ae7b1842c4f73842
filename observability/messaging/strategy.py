"""Worker strategy of ``ObservableTask``: what a message must pass before it becomes a request.

A Celery built-in task (``celery.chord_unlock``, ``celery.chain``, ... registered in every app, and each a way
for whoever writes to the broker to make workers loop or fan out) is dead-lettered as ``builtin_task``, never
run: the project uses none of them. A message body larger than ``CELERY_TASK_MAX_MESSAGE_BYTES`` is
dead-lettered as ``message_too_large`` - stored truncated, with its real size - before it is decoded.

Redis does not count deliveries, so a message whose execution kills its worker process (SIGKILL, OOM,
segfault) would be redelivered forever (celery#9082). When a redelivered message - and only then: a first
delivery costs nothing - has already lost its worker ``max_deliveries`` times (``delivery_counter``), it is
dead-lettered as ``poison_message`` and acknowledged instead of run again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from celery import Celery, Task
from celery.worker.strategy import default
from django.conf import settings
from kombu.message import Message
from redis.exceptions import RedisError

from observability import telemetry
from observability.deadletters import services as dead_letters
from observability.deadletters.models import DeadLetterReason
from observability.errors import MessageTooLargeError
from observability.failure import Failure
from observability.messaging import delivery_counter
from observability.messaging.consumer import failure_from_message

__all__ = ["BUILTIN_TASK_PREFIX", "DELIVERY_COUNT_HEADER", "STORED_BODY_CHARS", "quarantining"]

log = structlog.get_logger(__name__)

#: Header the strategy sets on a redelivered message: its deliveries so far, for the request to record.
DELIVERY_COUNT_HEADER = "x-delivery-count"
#: Names of Celery's built-in tasks (``celery.app.builtins``); no task of the project starts with it.
BUILTIN_TASK_PREFIX = "celery."
#: Characters of an oversized message's body kept in its dead letter: enough to tell what it was.
STORED_BODY_CHARS = 4096


def quarantining(task: Task[Any, Any], app: Celery, consumer: Any, **options: Any) -> Callable[..., Any]:
    """Celery's default strategy, preceded by the built-in and size checks and the delivery count of
    redelivered messages."""
    if task.name.startswith(BUILTIN_TASK_PREFIX):
        return _refusing_builtin
    handle = default(task, app, consumer, **options)
    max_deliveries: int = getattr(task, "max_deliveries", 1)
    max_bytes: int = settings.CELERY_TASK_MAX_MESSAGE_BYTES

    def task_message_handler(message: Message, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> Any:
        size = len(message.body or b"")  # bytes as kombu decoded them off the envelope
        if size > max_bytes:
            _dead_letter_too_large(message, size, max_bytes)
            return None
        if (message.delivery_info or {}).get("redelivered"):
            task_id = str(message.headers.get("id", ""))
            try:
                lost = delivery_counter.lost_runs(task_id)
            except RedisError as exc:
                # Fail open: running a message once more is better than stalling on a counter.
                log.warning("delivery_counter.unavailable", task_id=task_id, error=str(exc))
            else:
                message.headers[DELIVERY_COUNT_HEADER] = str(lost + 1)
                if lost >= max_deliveries:
                    _quarantine(message, lost + 1, max_deliveries)
                    return None
        return handle(message, body, ack, reject, callbacks, **kw)

    return task_message_handler


def _refusing_builtin(message: Message, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> None:
    task_name = str(message.headers.get("task", ""))
    error = f"{task_name} is a Celery built-in task: workers of this project run only its own tasks"
    failure = failure_from_message(message, DeadLetterReason.BUILTIN_TASK, error, "celery.exceptions.NotRegistered")
    _settle(message, failure, "BuiltinTask")


_TOO_LARGE = f"{MessageTooLargeError.__module__}.{MessageTooLargeError.__qualname__}"


def _dead_letter_too_large(message: Message, size: int, max_bytes: int) -> None:
    error = f"message body of {size} bytes exceeds CELERY_TASK_MAX_MESSAGE_BYTES ({max_bytes}); stored truncated"
    # Not decoded: the body is kept as its first characters, the arguments are not parsed out of it.
    body = message.body if isinstance(message.body, bytes) else str(message.body or "").encode()
    head = body[: STORED_BODY_CHARS * 4].decode("utf-8", "replace")[:STORED_BODY_CHARS]
    failure = failure_from_message(message, DeadLetterReason.MESSAGE_TOO_LARGE, error, _TOO_LARGE, raw=head)
    _settle(message, failure, MessageTooLargeError.__name__)


def _settle(message: Message, failure: Failure, error_type: str) -> None:
    """Acknowledge ``message`` once ``failure`` is recorded (or deferred); give it back when neither worked."""
    if not dead_letters.record_or_report(failure):
        message.reject(requeue=True)  # neither Postgres nor the broker took it: give it back
        return
    telemetry.task_outcome_in_main(failure.task_name, failure.queue, "rejected", error_type, None)
    message.ack()


def _quarantine(message: Message, deliveries: int, max_deliveries: int) -> None:
    failure = failure_from_message(
        message,
        DeadLetterReason.POISON_MESSAGE,
        f"quarantined on delivery {deliveries}: its previous {deliveries - 1} deliveries ended with the "
        f"worker process lost (limit {max_deliveries})",
        "billiard.exceptions.WorkerLostError",
    )
    failure.delivery_count = deliveries
    _settle(message, failure, "PoisonMessage")
