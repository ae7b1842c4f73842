"""``ObservableTask``: the one base class every task of the project runs through (the app's ``task_cls``).

Its class attributes state every reliability default in one place. Tasks stay thin and never catch
exceptions: this class owns the failure policy of ``observability.errors`` - transient errors retry with
exponential backoff and jitter, permanent ones give up at once.
"""

from __future__ import annotations

from typing import Any

from celery.contrib.django.task import DjangoTask

from observability.backoff import backoff_seconds
from observability.errors import ErrorKind, classify

__all__ = ["ObservableTask"]


class ObservableTask(DjangoTask):  # type: ignore[type-arg]
    #: Acknowledge after the task ran, so a worker crash hands the message to another worker.
    acks_late = True
    #: A child killed mid-task (SIGKILL, OOM) requeues its message instead of acknowledging it.
    reject_on_worker_lost = True
    #: Seconds before ``SoftTimeLimitExceeded`` is raised inside the task (a transient error: retried).
    soft_time_limit: int | None = 240
    #: Seconds before the child running the task is killed. Must stay below the broker visibility timeout.
    time_limit: int | None = 300
    #: Retries of transient errors before the task gives up.
    max_retries: int | None = 5
    #: First retry waits about this many seconds; each later one doubles it.
    retry_backoff_base_seconds: float = 2.0
    #: No retry waits longer than this.
    retry_backoff_max_seconds: float = 300.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            if classify(exc) is ErrorKind.TRANSIENT and self.request.called_directly is False:
                # Once max_retries is used up, retry() re-raises ``exc`` itself: a final failure.
                raise self.retry(exc=exc, countdown=self.retry_delay_seconds(self.request.retries)) from exc
            raise

    def retry_delay_seconds(self, retries: int) -> float:
        """Countdown before the retry that follows ``retries`` earlier ones (see ``backoff_seconds``)."""
        return backoff_seconds(retries, base=self.retry_backoff_base_seconds, cap=self.retry_backoff_max_seconds)
