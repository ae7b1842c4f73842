"""Sentry reports of final failures: one error event per dead letter, in the worker's main process, grouped
by the dead letter's fingerprint and carrying the failed message's trace id - never its arguments, headers or
raw message."""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any

import sentry_sdk
import structlog
from django.conf import settings

from observability.failure import Failure

if TYPE_CHECKING:
    from sentry_sdk._types import Event

__all__ = ["report_dead_letter"]

log = structlog.get_logger("observability.sentry")


def report_dead_letter(failure: Failure, dead_letter_id: int | None) -> None:
    """Report a final failure (called once per dead letter, in the worker's main process).

    One error event titled ``<ExceptionType>: <message>``, with the failed run's frames, tags ``task``,
    ``queue``, ``reason``, ``dead_letter_id`` (``deferred`` when Postgres was down), ``exception_type``,
    fingerprint ``["dead-letter", failure.fingerprint]`` and the message's trace id. Never its arguments,
    headers or raw message. Non-blocking (the SDK sends from its own thread) and never raises.
    """
    if not sentry_sdk.get_client().is_active():
        return
    try:
        with sentry_sdk.isolation_scope() as scope:
            # The main process's breadcrumbs belong to the other messages it handled.
            scope.clear_breadcrumbs()
            sentry_sdk.capture_event(_dead_letter_event(failure, dead_letter_id))
    except Exception:  # reporting is best effort: it must never stop the message's acknowledgement
        log.exception("sentry.report_failed", dead_letter_id=dead_letter_id, task_id=failure.task_id)


def _dead_letter_event(failure: Failure, dead_letter_id: int | None) -> Event:
    module, _, name = failure.exception_type.rpartition(".")
    exception: dict[str, Any] = {
        "type": name or "DeadLetter",
        "value": failure.exception_message or failure.reason,
        "mechanism": {"type": "dead_letter", "handled": True},
    }
    if module:
        exception["module"] = module
    frames = _frames(failure.traceback)
    if frames:
        exception["stacktrace"] = {"frames": frames}
    tags = {
        "task": failure.task_name,
        "queue": failure.queue,
        "reason": failure.reason,
        "dead_letter_id": "deferred" if dead_letter_id is None else str(dead_letter_id),
        "exception_type": failure.exception_type,
        "celery_task_id": failure.task_id,
    }
    return {
        "level": "error",
        "logger": "observability.deadletters.services",
        "transaction": failure.task_name,
        "exception": {"values": [exception]},
        "tags": {key: value for key, value in tags.items() if value},
        "fingerprint": ["dead-letter", failure.fingerprint],
        "contexts": {
            # Without a producer's trace id, a fresh one: not the trace of the worker's main process.
            "trace": {"trace_id": failure.trace_id or uuid.uuid4().hex, "span_id": uuid.uuid4().hex[16:]},
            "dead_letter": {
                "id": dead_letter_id,
                "task_id": failure.task_id,
                "retries": failure.retries,
                "delivery_count": failure.delivery_count,
                "failed_at": failure.failed_at,
            },
        },
    }


_FRAME = re.compile(r'^  File "(?P<path>[^"]+)", line (?P<lineno>\d+), in (?P<function>.+)$')


def _frames(traceback: str) -> list[dict[str, Any]]:
    """Sentry frames (oldest first) of the last exception of a formatted Python traceback."""
    frames: list[dict[str, Any]] = []
    for line in traceback.rpartition("Traceback (most recent call last):")[2].splitlines():
        match = _FRAME.match(line)
        if match:
            path = match["path"]
            in_app = path.startswith(str(settings.BASE_DIR)) and "-packages/" not in path
            frames.append({"abs_path": path, "filename": path, "lineno": int(match["lineno"]),
                           "function": match["function"], "in_app": in_app})  # fmt: skip
        elif frames and line.startswith("    ") and "context_line" not in frames[-1] and line.strip(" ^~"):
            frames[-1]["context_line"] = line.strip()
    return frames
