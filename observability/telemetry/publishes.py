"""What each task publish records, in every producer (web, beat, worker children, ``dlq replay``): its PRODUCER
span (``send <queue>``), the trace context and publish time in the message's headers, the published and failed
counters and the publish-duration histogram.

A publish is bracketed by ``publish_started`` and ``publish_finished`` (``observability.publishing``: around
``Celery.send_task``, through which every publish goes) and named on the way by ``on_publish`` (Celery's
``before_task_publish`` signal: the routed queue, the task id, the headers to write). The span is current from
start to end, so the message's ``traceparent`` is the producer span's - the run's CONSUMER span is its child - and
a publish from inside a run (a sub-task, a retry) is a child of that run's span.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.trace import Status, StatusCode

from observability.telemetry.providers import current
from observability.telemetry.task_spans import qualified_type

__all__ = ["PUBLISHED_AT_HEADER", "Publish", "on_publish", "publish_finished", "publish_started"]

#: Header the producer sets: publish time (unix seconds), for the queue-wait histogram.
PUBLISHED_AT_HEADER = "x-published-at"


@dataclass(slots=True)
class Publish:
    """One publish under way: its task, span, start and - once Celery has routed it - queue."""

    task_name: str
    started: float
    span: trace.Span
    token: object
    queue: str | None = None
    own: Token[Publish | None] | None = None


_publishing: ContextVar[Publish | None] = ContextVar("observability_publishing", default=None)

# Metric attribute sets, built once per (task, queue[, outcome | error type]) and shared by every publish.
_attribute_sets: dict[tuple[str, ...], dict[str, str]] = {}


def _attribute_set(task: str, queue: str, key: str = "", value: str = "") -> dict[str, str]:
    cache_key = (task, queue, key, value)
    attributes = _attribute_sets.get(cache_key)
    if attributes is None:
        if len(_attribute_sets) > 1024:  # a bound keeps odd error types from growing it
            _attribute_sets.clear()
        attributes = {"task": task, "queue": queue}
        if key:
            attributes[key] = value
        _attribute_sets[cache_key] = attributes
    return attributes


def publish_started(task_name: str) -> Publish:
    """Start the span of a publish of ``task_name`` and make it current until ``publish_finished``."""
    spans = current().task_spans
    span: trace.Span = trace.INVALID_SPAN
    token: object = None
    if spans is not None:
        span = spans.start_send(task_name)
        token = otel_context.attach(trace.set_span_in_context(span))
    publish = Publish(task_name, time.perf_counter(), span, token)
    publish.own = _publishing.set(publish)
    return publish


def on_publish(headers: dict[str, Any], task_name: str, queue: str) -> None:
    """Before a task message leaves (``before_task_publish``): name the publish's span after the routed queue and
    the task id, propagate the current trace (the producer span's) and stamp the publish time."""
    state = current()
    headers[PUBLISHED_AT_HEADER] = time.time()
    publish = _publishing.get()
    if publish is None:
        # A message sent around ``Celery.send_task`` (nothing in the project does): counted, no span of its own.
        state.instruments.published.add(1, _attribute_set(task_name, queue))
    elif publish.queue is None:
        publish.queue = queue
        if state.task_spans is not None:
            state.task_spans.set_destination(publish.span, task_name, queue, headers.get("id"))
    if state.task_spans is not None:
        inject(headers)


def publish_finished(publish: Publish, error: BaseException | None = None, *, queue: str = "celery") -> None:
    """Count the publish (sent, or failed with its error type), record its duration and end its span; ``queue``
    names the destination of a publish that failed before Celery routed it."""
    state = current()
    duration = time.perf_counter() - publish.started
    task, destination = publish.task_name, publish.queue or queue
    span = publish.span
    if error is None:
        state.instruments.published.add(1, _attribute_set(task, destination))
        # Recorded while the span is current, so the histogram sample carries it as an exemplar.
        state.instruments.publish_duration.record(duration, _attribute_set(task, destination, "outcome", "sent"))
    else:
        state.instruments.publish_failed.add(1, _attribute_set(task, destination, "error_type", type(error).__name__))
        state.instruments.publish_duration.record(duration, _attribute_set(task, destination, "outcome", "failed"))
        if state.task_spans is not None and span.is_recording():
            if publish.queue is None:
                state.task_spans.set_destination(span, task, destination, None)
            span.set_attribute("error.type", qualified_type(error))
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
    if publish.token is not None:
        span.end()
        otel_context.detach(publish.token)  # type: ignore[arg-type]
    if publish.own is not None:
        _publishing.reset(publish.own)
