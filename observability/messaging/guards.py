"""Start-up guard rails: a worker refuses to start when a task could outlive the broker's visibility
timeout - Redis would then hand the still-running message to another worker and the task would run twice.

Checked for every registered task: the hard time limit (required, and below the timeout) and the longest
retry countdown plus that limit. Countdowns and ETAs given at publish time (plus the time limit) are checked
by ``ObservableTask.apply_async``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, bootsteps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

__all__ = ["VisibilityTimeoutGuard", "visibility_timeout_problems"]


def visibility_timeout_problems(app: Celery) -> list[str]:
    """One line per task whose time limit or retry backoff reaches the visibility timeout."""
    limit = settings.CELERY_BROKER_VISIBILITY_TIMEOUT_SECONDS
    problems = []
    if limit <= settings.PROMO_TRANSITION_HORIZON_SECONDS:
        problems.append(f"PROMO_TRANSITION_HORIZON_SECONDS reaches the visibility timeout ({limit} s)")
    for name, task in sorted(app.tasks.items()):
        if name.startswith("celery."):
            continue
        time_limit = task.time_limit or app.conf.task_time_limit
        if time_limit is None:
            problems.append(f"{name}: no hard time limit; set time_limit below the visibility timeout ({limit} s)")
        elif time_limit >= limit:
            problems.append(f"{name}: time_limit {time_limit} s reaches the visibility timeout ({limit} s)")
        # A retry waits unacknowledged in the worker for its countdown, then runs: both must fit.
        backoff_cap = getattr(task, "retry_backoff_max_seconds", 0)
        if time_limit is not None and backoff_cap + time_limit >= limit:
            problems.append(
                f"{name}: retry backoff up to {backoff_cap} s plus time_limit {time_limit} s reaches the "
                f"visibility timeout ({limit} s)"
            )
    return problems


class VisibilityTimeoutGuard(bootsteps.Step):
    """Worker bootstep: raise at start, naming each offending task, instead of running tasks twice later."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        problems = visibility_timeout_problems(worker.app)
        if problems:
            raise ImproperlyConfigured(
                "refusing to start: tasks could outlive the broker visibility timeout "
                "(CELERY_BROKER_VISIBILITY_TIMEOUT_SECONDS):\n  " + "\n  ".join(problems)
            )
        super().__init__(worker, **kwargs)
