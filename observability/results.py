"""What storing a task's state in the result backend may cost a run: never its outcome.

Celery's tracer stores each state (``mark_as_done``, ``mark_as_retry``, ``mark_as_failure``, ``store_result``)
inside ``trace_task``; a backend error there (Redis down) escapes as the run's own failure, so a task that
succeeded was dead-lettered and a replay would run it again. ``GuardedBackend`` wraps the task's backend: a
state that cannot be stored is logged (one line, the task id and the backend's error) and counted
(``celery.task.results_unstored``), and the run's outcome stands. Only the worker writes through it: reading
a result (``AsyncResult.get``) still fails loudly, as a caller waiting for an answer must hear.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery.exceptions import BackendStoreError
from redis.exceptions import RedisError

from observability import telemetry

__all__ = ["GuardedBackend"]

log = structlog.get_logger(__name__)

#: The backend's writes of a task's state, and the state each stores.
_WRITES = {
    "mark_as_done": "SUCCESS",
    "mark_as_retry": "RETRY",
    "mark_as_failure": "FAILURE",
    "mark_as_started": "STARTED",
    "store_result": "",
}


class GuardedBackend:
    """``backend`` with its writes of a task's state made best effort; everything else passes through."""

    def __init__(self, backend: Any, task_name: str) -> None:
        self.wrapped = backend
        self.task_name = task_name
        # Redis errors (the backend's own connection errors are among them) and a value the backend refuses.
        self._errors: tuple[type[BaseException], ...] = (
            RedisError,
            BackendStoreError,
            *tuple(getattr(backend, "connection_errors", ())),
        )

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.wrapped, name)
        if name not in _WRITES:
            return attribute

        def guarded(task_id: str, *args: Any, **kwargs: Any) -> Any:
            try:
                return attribute(task_id, *args, **kwargs)
            except self._errors as exc:
                state = _WRITES[name] or str(args[1] if len(args) > 1 else kwargs.get("state", ""))
                _unstored(task_id, self.task_name, state, exc)
                return None

        return guarded


def _unstored(task_id: str, task_name: str, state: str, exc: BaseException) -> None:
    telemetry.task_result_unstored(task_name, state)
    log.warning(
        "task.result_unstored",
        task_id=task_id,
        task_name=task_name,
        state=state,
        error=f"{type(exc).__name__}: {exc}"[:300],
    )
