"""What each task run records: the run's CONSUMER span, its counters and histograms, its summary log line - in a
worker child - and the outcomes the worker's main process decides for runs its child could not report. (What a
publish records is ``observability.telemetry.publishes``.)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace import Link, Status, StatusCode

from observability.delivery import delivery_queue
from observability.logs import bind_task_context, clear_task_context
from observability.telemetry.in_process_metrics import AttributeSet
from observability.telemetry.providers import current
from observability.telemetry.publishes import PUBLISHED_AT_HEADER
from observability.telemetry.task_spans import qualified_type

__all__ = [
    "REPLAY_TRACEPARENT_HEADER",
    "TaskRun",
    "task_finished",
    "task_outcome_in_main",
    "task_result_unstored",
    "task_started",
]

log = structlog.get_logger("observability.task")

#: Header of a replayed dead letter: the ``traceparent`` of the failed message, for a span link.
REPLAY_TRACEPARENT_HEADER = "x-dead-letter-traceparent"


# --- Task runs (worker child) ------------------------------------------------------------------------------------
@dataclass
class TaskRun:
    task_name: str
    attributes: AttributeSet
    started: float
    queue_wait: float | None
    span: trace.Span
    token: object


def _queue_wait(request: Any, now: float) -> float | None:
    published_at = _header(request, PUBLISHED_AT_HEADER)
    if published_at is None:
        return None
    ready_at = float(published_at)
    if request.eta:
        # A deliberate delay (ETA, countdown, retry backoff) is not waiting in the queue.
        eta = request.eta if isinstance(request.eta, datetime) else datetime.fromisoformat(str(request.eta))
        ready_at = max(ready_at, eta.timestamp())
    return max(now - ready_at, 0.0)


def _header(request: Any, name: str) -> Any:
    # Celery puts a protocol-2 message's headers, custom ones included, into the request's attributes.
    return request.__dict__.get(name)


def _links(request: Any) -> list[Link]:
    traceparent = _header(request, REPLAY_TRACEPARENT_HEADER)
    if not traceparent:
        return []
    span_context = trace.get_current_span(extract({"traceparent": traceparent})).get_span_context()
    return [Link(span_context, {"dead_letter.replay_of": str(_header(request, "x-dead-letter-replay-of"))})]


# Metric attribute sets, built once per (task, queue[, outcome, error type]) and shared by every run: the SDK
# copies what it keeps. Task names, queues and outcomes are few; a bound keeps odd error types from growing it.
_attribute_sets: dict[tuple[str, ...], AttributeSet] = {}


def _attribute_set(task: str, queue: str, *more: str) -> AttributeSet:
    key = (task, queue, *more)
    attributes = _attribute_sets.get(key)
    if attributes is None:
        if len(_attribute_sets) > 1024:
            _attribute_sets.clear()
        plain = {"task": task, "queue": queue}
        if more:
            plain["outcome"] = more[0]
        if len(more) > 1:
            plain["error_type"] = more[1]
        attributes = _attribute_sets[key] = AttributeSet(plain)
    return attributes


def task_started(task_name: str, request: Any) -> TaskRun:
    """Start the run's span, bind its log context and count it."""
    state = current()
    now = time.time()
    queue = delivery_queue(request.delivery_info, "celery")
    task_id = str(request.id)
    retries = int(request.retries or 0)
    attributes = _attribute_set(task_name, queue)
    span: trace.Span = trace.INVALID_SPAN
    token: object = None
    if state.task_spans is not None:
        span = state.task_spans.start(
            task_name,
            queue,
            parent=extract(request.__dict__) if _header(request, "traceparent") else None,
            message_id=task_id,
            retries=retries,
            links=_links(request),
        )
        token = otel_context.attach(trace.set_span_in_context(span))
    bind_task_context(task_name=task_name, task_id=task_id, retries=retries)
    state.instruments.started.add(1, attributes)
    wait = _queue_wait(request, now)
    if wait is not None:
        state.instruments.queue_wait.record(wait, attributes)
    return TaskRun(task_name, attributes, time.perf_counter(), wait, span, token)


def task_finished(run: TaskRun, outcome: str, error: BaseException | None = None) -> None:
    """Record the run's outcome and duration, end its span, log the summary line, unbind the context."""
    state = current()
    duration = time.perf_counter() - run.started
    error_type = type(error).__name__ if error is not None else ""
    task, queue = run.attributes["task"], run.attributes["queue"]
    state.instruments.finished.add(1, _attribute_set(task, queue, outcome, error_type))
    # Recorded while the span is current, so the histogram sample carries it as an exemplar.
    state.instruments.duration.record(duration, _attribute_set(task, queue, outcome))
    # The chain's level filter, asked before the event is built: at WARNING a dropped line cost 5 us per run.
    if log.isEnabledFor(logging.INFO):
        # Microseconds rounded to an int, then shown in ms: round(x, 3) of a float costs four times as much.
        fields: dict[str, object] = {"outcome": outcome, "duration_ms": round(duration * 1_000_000) / 1000}
        # Keys without a value are left out, not logged as None.
        if run.queue_wait is not None:
            fields["queue_wait_ms"] = round(run.queue_wait * 1_000_000) / 1000
        if error_type:
            fields["error_type"] = error_type
        log.info("task.finished", **fields)
    clear_task_context()
    if run.token is not None:
        run.span.set_attribute("celery.outcome", outcome)
        # A retried run is no failure of the message (its retry is published): no error.type, no ERROR status.
        if error is not None and outcome != "retried":
            run.span.set_attribute("error.type", qualified_type(error))
            run.span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
        run.span.end()
        otel_context.detach(run.token)  # type: ignore[arg-type]


# --- Outcomes decided in the worker's main process ------------------------------------------------------------
def task_outcome_in_main(task_name: str, queue: str, outcome: str, error_type: str, duration: float | None) -> None:
    """Count a run whose end the child could not report (killed at its time limit, worker lost, rejected)."""
    instruments = current().instruments
    attributes = {"task": task_name or "(unknown)", "queue": queue or "celery"}
    instruments.finished.add(1, {**attributes, "outcome": outcome, "error_type": error_type})
    if duration is not None:
        instruments.duration.record(duration, {**attributes, "outcome": outcome})


def task_result_unstored(task_name: str, state: str) -> None:
    """Count a task state (``SUCCESS``, ``RETRY``...) the result backend did not take; the run's outcome stands."""
    current().instruments.results_unstored.add(1, {"task": task_name or "(unknown)", "state": state})
