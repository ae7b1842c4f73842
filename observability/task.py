"""``ObservableTask``: the one base class every task of the project runs through (the app's ``task_cls``).

The class attributes state every reliability default in one place. Tasks stay thin and never catch
exceptions: this class owns the failure policy of ``observability.errors`` - transient errors retry with
exponential backoff and jitter, permanent ones give up at once - and its request
(``observability.messaging.request``) turns every terminal failure into a dead letter.

This module is imported to resolve the app's ``task_cls``, possibly before Django's app registry is ready:
the rooms it composes are imported when a task first runs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import Any

import structlog
from celery.contrib.django.task import DjangoTask
from celery.exceptions import Retry
from django.conf import settings
from django.utils import timezone
from kombu.utils import json
from redis.exceptions import RedisError

from observability import brokers
from observability.backoff import backoff_seconds
from observability.delivery import delivery_queue
from observability.errors import ErrorKind, MessageTooLargeError, PermanentError, classify

__all__ = ["SCHEDULE_ENTRY_HEADER", "SKIPPED", "ObservableTask"]

log = structlog.get_logger(__name__)

#: Header beat puts on the messages of each schedule entry (see CELERY_BEAT_SCHEDULE): the entry's key.
SCHEDULE_ENTRY_HEADER = "x-schedule-entry"
#: What a singleton run returns when another run holds the lock.
SKIPPED = object()
# Compare-and-delete: a run releases the singleton lock only if it still holds it.
_RELEASE_LOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class ObservableTask(DjangoTask):  # type: ignore[type-arg]
    #: Worker-side request: a dead letter for every terminal failure, before acknowledgement.
    Request = "observability.messaging.request:ObservableRequest"
    #: Worker strategy: a redelivered message that already lost its worker max_deliveries times is quarantined.
    Strategy = "observability.messaging.strategy:quarantining"
    #: Acknowledge after the task ran, so a worker crash hands the message to another worker.
    acks_late = True
    #: A child killed mid-task (SIGKILL, OOM) requeues its message; ``max_deliveries`` bounds the loop.
    reject_on_worker_lost = True
    #: Deliveries of one message before it is quarantined as a poison message instead of run again.
    max_deliveries: int = settings.DEAD_LETTER_MAX_DELIVERIES
    #: Seconds before ``SoftTimeLimitExceeded`` is raised inside the task (a transient error: retried).
    soft_time_limit: int | None = 240
    #: Seconds before the child running the task is killed. Must stay below the broker visibility timeout.
    time_limit: int | None = 300
    #: Retries of transient errors before the task is dead-lettered.
    max_retries: int | None = 5
    #: First retry waits about this many seconds; each later one doubles it.
    retry_backoff_base_seconds: float = 2.0
    #: No retry waits longer than this.
    retry_backoff_max_seconds: float = 300.0
    #: Periodic work: two overlapping runs never execute at once; the second records that it skipped.
    singleton: bool = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly:
            return super().__call__(*args, **kwargs)
        from observability import telemetry
        from observability.beat import record_beat_success
        from observability.sentry import monitor_periodic_run

        run = telemetry.task_started(self.name, request)
        schedule_entry = request.__dict__.get(SCHEDULE_ENTRY_HEADER)
        # A failure that escapes is terminal: the request records it as a dead letter.
        outcome = "dead_lettered"
        error: BaseException | None = None
        try:
            with monitor_periodic_run(schedule_entry) if schedule_entry else nullcontext():
                # The singleton lock's Redis call is under the retry policy too: a blip there is as transient.
                result = self._run_with_retry_policy(self._run_alone if self.singleton else self._run, args, kwargs)
            outcome = "skipped" if result is SKIPPED else "succeeded"
            if schedule_entry:
                record_beat_success(schedule_entry)  # best effort: never turns a success into a failure
            return {"skipped": 1} if result is SKIPPED else result
        except Retry as exc:
            outcome, error = "retried", exc.exc
            raise
        except (SystemExit, KeyboardInterrupt) as exc:
            # The child exits with it and Celery redelivers the message, as for a lost worker.
            outcome, error = "failed", exc
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            telemetry.task_finished(run, outcome, error)

    @property
    def backend(self) -> Any:
        """The result backend, its writes of this task's state made best effort (``observability.results``):
        Celery stores them inside the run, where a backend error would turn a success into a dead letter."""
        backend = super().backend
        guarded = self.__dict__.get("_guarded_backend")
        if guarded is not None and guarded.wrapped is backend:
            return guarded  # every publish reads it (its AsyncResult): the import below only once
        from observability.results import GuardedBackend

        guarded = self.__dict__["_guarded_backend"] = GuardedBackend(backend, self.name)
        return guarded

    @backend.setter
    def backend(self, value: Any) -> None:
        self._backend = value

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        return super().__call__(*args, **kwargs)

    def _run_with_retry_policy(self, run: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            return run(*args, **kwargs)
        except Exception as exc:  # the last-resort handler: every failure is classified here
            if classify(exc) is ErrorKind.TRANSIENT and self.request.called_directly is False:
                # Once max_retries is used up, retry() re-raises ``exc`` itself: a final failure.
                raise self.retry(exc=exc, countdown=self.retry_delay_seconds(self.request.retries)) from exc
            raise

    def _run_alone(self, *args: Any, **kwargs: Any) -> Any:
        from observability.redis_client import state_redis

        key = f"observability:singleton:{self.name}"
        client = state_redis()
        # The lock outlives no run: it expires with the hard time limit, when the child is killed.
        run_id = str(self.request.id)
        if not client.set(key, run_id, nx=True, ex=int(self.time_limit or 300)):
            log.warning("task.skipped", task_name=self.name, reason="a previous run is still in progress")
            return SKIPPED
        try:
            return self._run(*args, **kwargs)
        finally:
            try:
                client.eval(_RELEASE_LOCK, 1, key, run_id)
            except RedisError as exc:
                # The run's outcome stands; the lock expires with the time limit.
                log.warning("task.lock_release_failed", task_name=self.name, error=str(exc))

    def retry(self, *args: Any, **options: Any) -> Any:
        # Back to the queue the run came from, on either broker. Celery names that queue only for a delivery
        # through the default exchange (Redis); on RabbitMQ it copies the exchange and routing key instead, and
        # native delayed delivery then routes the retry's countdown by the task's default queue: a task
        # published to a queue of its own would be retried into another one, or into none declared (lost).
        if "queue" not in options and (queue := delivery_queue(self.request.delivery_info)):
            options["queue"] = queue
        return super().retry(*args, **options)

    def retry_delay_seconds(self, retries: int) -> float:
        """Countdown before the retry that follows ``retries`` earlier ones (see ``backoff_seconds``)."""
        return backoff_seconds(retries, base=self.retry_backoff_base_seconds, cap=self.retry_backoff_max_seconds)

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:  # type: ignore[override]
        delay = _delay_seconds(options.get("countdown"), options.get("eta"))
        if delay is not None:
            broker = brokers.current()
            problem = broker.countdown_problem(self.name, delay, self.time_limit or 0)
            if problem:
                raise PermanentError(problem)
            if delay > 0 and (countdown := broker.countdown(delay)) != delay:
                options = {**options, "countdown": countdown, "eta": None}
        _check_message_size(self.name, args, kwargs)
        return super().apply_async(args, kwargs, **options)


def _check_message_size(name: str, args: Any, kwargs: Any) -> None:
    """Refuse, at the producer, a message the workers would dead-letter unread as ``message_too_large``: the
    body of protocol 2 is the JSON of ``[args, kwargs, embed]``, and ``embed`` (callbacks, chord) is small."""
    limit = settings.CELERY_TASK_MAX_MESSAGE_BYTES
    bound = _scalar_size_bound(args or (), kwargs or {})
    if bound is not None and bound <= limit:
        return  # ids and short values, the usual arguments: no need to serialize them twice
    try:
        size = len(json.dumps([list(args or ()), dict(kwargs or {}), {}]).encode())
    except (TypeError, ValueError):
        return  # not JSON: Celery's serializer refuses it with its own error (kombu's EncodeError)
    if size > limit:
        raise MessageTooLargeError(
            f"{name}: its arguments make a {size}-byte message, over CELERY_TASK_MAX_MESSAGE_BYTES ({limit}); "
            "pass ids and let the task read the data"
        )


#: The most bytes the JSON of one scalar can take: a float's repr (``-1.2345678901234567e-308``), an int's under
#: 2**64, ``Infinity``, ``false``; 12 bytes a character is a string's worst case (an escaped surrogate pair).
_SCALAR_BYTES = 24
_CHARACTER_BYTES = 12


def _scalar_size_bound(args: Any, kwargs: Any) -> int | None:
    """An upper bound of the size ``_check_message_size`` measures, found without serializing, when every argument
    is a string, a number, a boolean or ``None`` (keyword names strings); ``None`` when one is anything else. Each
    value and key counts its worst-case JSON plus 4 bytes of quotes, separators and brackets."""
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        return None
    bound = 16  # [[], {}, {}] and the spaces after its commas
    for value in (*args, *kwargs, *kwargs.values()):
        kind = type(value)
        if kind is str:
            bound += _CHARACTER_BYTES * len(value) + 4
        elif kind is bool or value is None or kind is float or (kind is int and -(2**63) <= value < 2**64):
            bound += _SCALAR_BYTES + 4
        else:
            return None
    return bound


def _delay_seconds(countdown: float | None, eta: datetime | str | None) -> float | None:
    if countdown is not None:
        return float(countdown)
    if isinstance(eta, str):
        eta = datetime.fromisoformat(eta)
    if isinstance(eta, datetime):
        aware = eta if timezone.is_aware(eta) else timezone.make_aware(eta, UTC)
        return (aware - timezone.now()).total_seconds()
    return None
