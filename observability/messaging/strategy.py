"""Worker strategy of ``ObservableTask``: poison-message quarantine before a message becomes a request.

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
from kombu.message import Message
from redis.exceptions import RedisError

from observability import telemetry
from observability.deadletters import services as dead_letters
from observability.deadletters.models import DeadLetterReason
from observability.messaging import delivery_counter
from observability.messaging.consumer import failure_from_message

__all__ = ["DELIVERY_COUNT_HEADER", "quarantining"]

log = structlog.get_logger(__name__)

#: Header the strategy sets on a redelivered message: its deliveries so far, for the request to record.
DELIVERY_COUNT_HEADER = "x-delivery-count"


def quarantining(task: Task[Any, Any], app: Celery, consumer: Any, **options: Any) -> Callable[..., Any]:
    """Celery's default strategy, preceded by the delivery count of redelivered messages."""
    handle = default(task, app, consumer, **options)
    max_deliveries: int = getattr(task, "max_deliveries", 1)

    def task_message_handler(message: Message, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> Any:
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


def _quarantine(message: Message, deliveries: int, max_deliveries: int) -> None:
    failure = failure_from_message(
        message,
        DeadLetterReason.POISON_MESSAGE,
        f"quarantined on delivery {deliveries}: its previous {deliveries - 1} deliveries ended with the "
        f"worker process lost (limit {max_deliveries})",
        "billiard.exceptions.WorkerLostError",
    )
    failure.delivery_count = deliveries
    if not dead_letters.record_or_report(failure):
        message.reject(requeue=True)  # neither Postgres nor the broker took it: give it back
        return
    telemetry.task_outcome_in_main(failure.task_name, failure.queue, "rejected", "PoisonMessage", None)
    message.ack()
