"""What storing a task's state in the result backend may cost a run: never its outcome.

Celery's tracer stores each state (``mark_as_done``, ``mark_as_retry``, ``mark_as_failure``, ``store_result``)
inside ``trace_task``; a backend error there (Redis down) escapes as the run's own failure, so a task that
succeeded was dead-lettered and a replay would run it again. ``GuardedBackend`` wraps the task's backend: a
state that cannot be stored is logged (one line, the task id and the backend's error) and counted
(``celery.task.results_unstored``), and the run's outcome stands. Only the worker writes through it: reading
a result (``AsyncResult.get``) still fails loudly, as a caller waiting for an answer must hear.

A failure's stored state is capped: its exception's text arguments and its traceback are cut to
``MAX_STORED_TEXT_CHARS`` - a 20 MB argument once made a 63 MB failure result, kept a day in Redis.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery.exceptions import BackendStoreError
from redis.exceptions import RedisError

from observability import telemetry

__all__ = ["MAX_STORED_TEXT_CHARS", "GuardedBackend"]

log = structlog.get_logger(__name__)

#: The backend's writes of a task's state, and the state each stores.
_WRITES = {
    "mark_as_done": "SUCCESS",
    "mark_as_retry": "RETRY",
    "mark_as_failure": "FAILURE",
    "mark_as_started": "STARTED",
    "store_result": "",
}


#: Longest exception message or traceback a failure result keeps, in characters (a dead letter keeps the rest).
MAX_STORED_TEXT_CHARS = 10_000
#: Writes whose first arguments are an exception and its traceback (``mark_as_failure``, ``mark_as_retry``).
_FAILURE_WRITES = frozenset({"mark_as_failure", "mark_as_retry"})


def _cut(text: str) -> str:
    if len(text) <= MAX_STORED_TEXT_CHARS:
        return text
    return f"{text[:MAX_STORED_TEXT_CHARS]} ... [{len(text) - MAX_STORED_TEXT_CHARS} characters cut]"


def _capped(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments of a failure write with the exception's text and the traceback cut to the cap. The
    exception keeps its type (what ``AsyncResult.get`` raises): only its ``args`` are cut, in place."""
    if args and isinstance(args[0], BaseException):
        exc = args[0]
        if any(isinstance(arg, str) and len(arg) > MAX_STORED_TEXT_CHARS for arg in exc.args):
            exc.args = tuple(_cut(arg) if isinstance(arg, str) else arg for arg in exc.args)
    if len(args) > 1 and isinstance(args[1], str):
        args = (args[0], _cut(args[1]), *args[2:])
    if isinstance(kwargs.get("traceback"), str):
        kwargs = {**kwargs, "traceback": _cut(kwargs["traceback"])}
    return args, kwargs


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
            if name in _FAILURE_WRITES:
                args, kwargs = _capped(args, kwargs)
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
