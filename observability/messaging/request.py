"""``ObservableRequest``: the worker-side request of every ``ObservableTask``, run in the worker's main
process, where the raw message is still at hand and before the message is acknowledged.

Every terminal failure (retries used up, permanent error, hard time limit) becomes a dead letter, written
before Celery acknowledges the message; if it can be neither written nor deferred, the message is requeued.
A run whose child process was lost counts towards the poison-message limit that ``observability.messaging.strategy``
enforces before a message becomes a request.
"""

from __future__ import annotations

import time

import structlog
from billiard.einfo import ExceptionInfo, ExceptionWithTraceback  # type: ignore[attr-defined]
from billiard.exceptions import WorkerLostError
from celery.exceptions import Ignore, Reject, Retry, Terminated, TimeLimitExceeded
from celery.worker import state
from celery.worker.request import Request

from observability import telemetry
from observability.deadletters import services as dead_letters
from observability.deadletters.models import DeadLetterReason
from observability.delivery import delivery_exchange, delivery_queue
from observability.errors import ErrorKind, classify
from observability.failure import Failure
from observability.messaging import delivery_counter
from observability.messaging.strategy import DELIVERY_COUNT_HEADER

__all__ = ["ObservableRequest", "terminal_reason"]

log = structlog.get_logger(__name__)

_NOT_TERMINAL = (Retry, Ignore, Terminated, WorkerLostError, SystemExit, KeyboardInterrupt)


def terminal_reason(exc: BaseException, *, retries: int, max_retries: int | None) -> DeadLetterReason | None:
    """Why a failure ends the message's life, or None when the message lives on (retried, requeued)."""
    if isinstance(exc, _NOT_TERMINAL) or (isinstance(exc, Reject) and getattr(exc, "requeue", False)):
        return None
    if isinstance(exc, TimeLimitExceeded):
        return DeadLetterReason.TIME_LIMIT_EXCEEDED
    if classify(exc) is ErrorKind.TRANSIENT and max_retries is not None and retries >= max_retries:
        return DeadLetterReason.MAX_RETRIES_EXCEEDED
    return DeadLetterReason.NON_RETRYABLE_ERROR


def _exception_type(exc: BaseException) -> str:
    # An exception that could not cross the process boundary arrives wrapped, with its class name kept.
    name = getattr(exc, "exc_cls_name", None)
    module = getattr(exc, "exc_module", None) or type(exc).__module__
    return f"{module}.{name or type(exc).__qualname__}"


class ObservableRequest(Request):
    def on_failure(self, exc_info: ExceptionInfo, send_failed_event: bool = True, return_ok: bool = False) -> None:
        exc: BaseException = exc_info.exception  # type: ignore[assignment]
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        reason: DeadLetterReason | None = None
        exc_message = str(exc)
        if isinstance(exc, TimeLimitExceeded) and state.should_terminate:
            pass  # a cold shutdown killed the run: Celery requeues it
        elif isinstance(exc, TimeLimitExceeded):
            # billiard reports a hard time limit here first, then calls on_timeout: record it now, before
            # this method acknowledges the message.
            reason = DeadLetterReason.TIME_LIMIT_EXCEEDED
            exc_message = f"hard time limit ({exc.args[0] if exc.args else '?'} s) exceeded: the child was killed"
        else:
            reason = terminal_reason(exc, retries=self.retries, max_retries=self.task.max_retries)
        if reason is not None:
            if not self._dead_letter(reason, _exception_type(exc), exc_message, str(exc_info.traceback or "")):
                self._requeue_unrecorded()
                return
            if reason is DeadLetterReason.TIME_LIMIT_EXCEEDED:
                self._count_outcome("dead_lettered", "TimeLimitExceeded")
        if isinstance(exc, WorkerLostError):
            # The child died mid-run: count the run, and the loss, which quarantines a poison message.
            self._count_outcome("failed", "WorkerLostError")
            delivery_counter.count_lost_run(self.id)
        elif isinstance(exc, SystemExit | KeyboardInterrupt) and not self._stopped_by_the_worker():
            # The task itself raised it (sys.exit in a library): the child counted the run and exits; Celery
            # redelivers the message as for a lost worker, so the loss counts towards the poison limit too.
            delivery_counter.count_lost_run(self.id)
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def _stopped_by_the_worker(self) -> bool:
        # Celery's flags (not in its type stubs): the run was cancelled (connection lost) or revoked.
        return bool(getattr(self, "_already_cancelled", False) or getattr(self, "_already_revoked", False))

    def _announce_revoked(self, reason: str, terminated: bool, signum: object, expired: bool) -> None:
        # Celery acknowledges an expired or revoked message without running it; count and log it, so a
        # discarded message (a beat tick's retry past the tick's expiry, say) is never a silent one.
        super()._announce_revoked(reason, terminated, signum, expired)  # type: ignore[misc]
        outcome = "expired" if expired else "revoked"
        self._count_outcome(outcome, "")
        log.warning("task.discarded", task_name=self.name, task_id=self.id, outcome=outcome, reason=reason)

    def _requeue_unrecorded(self) -> None:
        # Neither Postgres nor the broker took the dead letter: give the message back instead of dropping it.
        state.task_ready(self)
        self.reject(requeue=True)

    def _count_outcome(self, outcome: str, error_type: str) -> None:
        started = self.time_start
        duration = time.time() - started if started else None
        queue = delivery_queue(self.delivery_info)
        telemetry.task_outcome_in_main(self.name, queue, outcome, error_type, duration)

    @property
    def retries(self) -> int:
        return int(self.request_dict.get("retries") or 0)

    def _dead_letter(self, reason: DeadLetterReason, exception_type: str, message: str, traceback: str) -> bool:
        """Record the failure; False when it could be neither written nor deferred (do not acknowledge)."""
        delivery_info = self.delivery_info or {}
        broker_message = getattr(self, "_message", None)
        headers = dict(broker_message.headers or {}) if broker_message is not None else {}
        failure = Failure(
            reason=reason.value,
            task_name=self.name,
            task_id=self.id,
            args=list(self.args or []),
            kwargs=dict(self.kwargs or {}),
            headers=headers,
            queue=delivery_queue(delivery_info),
            exchange=delivery_exchange(delivery_info),
            routing_key=delivery_queue(delivery_info),
            retries=self.retries,
            delivery_count=int(headers.get(DELIVERY_COUNT_HEADER, 1)),
            exception_type=exception_type,
            exception_message=message[:10_000],
            traceback=traceback,
            worker_host=self.hostname or "",
        )
        return dead_letters.record_or_report(failure)
