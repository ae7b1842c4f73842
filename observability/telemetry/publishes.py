"""What each task publish records, in every producer (web, beat, worker children, ``dlq replay``): its PRODUCER
span (``send <queue>``), the trace context and publish time in the message's headers, the published and failed
counters and the publish-duration histogram.

A publish is bracketed by ``publish_started`` and ``publish_finished`` (``observability.publishing``: around
``Celery.send_task``, through which every publish goes) and named on the way by ``on_publish`` (Celery's
``before_task_publish`` signal: the routed queue, the task id, the headers to write). The span is a child of the
current span - a publish from inside a run (a sub-task, a retry) is a child of that run's span - and its context
is the message's ``traceparent``, so the run's CONSUMER span is its child.

The span is not made current while Celery publishes: attaching and detaching it cost about 17 us of a 460 us
publish (``python -m bench.run --only publish``), for nothing but the Redis client spans of the web process,
which stay children of the request's span.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

from opentelemetry import baggage, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagate import get_global_textmap, inject
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from observability.delivery import routed_queue
from observability.telemetry.in_process_metrics import AttributeSet
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
    queue: str | None = None
    own: Token[Publish | None] | None = None


_publishing: ContextVar[Publish | None] = ContextVar("observability_publishing", default=None)

# Metric attribute sets, built once per (task, queue[, outcome | error type]) and shared by every publish.
_attribute_sets: dict[tuple[str, ...], AttributeSet] = {}


def _attribute_set(task: str, queue: str, key: str = "", value: str = "") -> AttributeSet:
    cache_key = (task, queue, key, value)
    attributes = _attribute_sets.get(cache_key)
    if attributes is None:
        if len(_attribute_sets) > 1024:  # a bound keeps odd error types from growing it
            _attribute_sets.clear()
        attributes = AttributeSet({"task": task, "queue": queue, key: value} if key else {"task": task, "queue": queue})
        _attribute_sets[cache_key] = attributes
    return attributes


_default_textmap: tuple[object, bool] = (None, False)


def _is_default_textmap() -> bool:
    """Whether the global propagator is the SDK's default (``OTEL_PROPAGATORS`` unset: W3C trace context, then
    baggage), decided once per propagator object. ``_propagators`` is private: test_task_spans pins it."""
    global _default_textmap
    textmap = get_global_textmap()
    if _default_textmap[0] is not textmap:
        kinds = [type(p) for p in getattr(textmap, "_propagators", ())]
        default = isinstance(textmap, CompositePropagator) and kinds == [
            TraceContextTextMapPropagator,
            W3CBaggagePropagator,
        ]
        _default_textmap = (textmap, default)
    return _default_textmap[1]


def _inject(headers: dict[str, Any], span: trace.Span) -> None:
    """What ``inject`` writes for the producer span ``span`` in the current context, 2 us sooner: with the default
    propagator and no baggage, the W3C ``traceparent`` (and ``tracestate``) formatted here (test_task_spans pins
    the two)."""
    if not _is_default_textmap() or baggage.get_all():
        inject(headers, context=trace.set_span_in_context(span))
        return
    context = span.get_span_context()
    headers["traceparent"] = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    if context.trace_state:
        headers["tracestate"] = context.trace_state.to_header()


def publish_started(task_name: str) -> Publish:
    """Start the span of a publish of ``task_name``, a child of the current span, until ``publish_finished``."""
    spans = current().task_spans
    span = spans.start_send(task_name) if spans is not None else trace.INVALID_SPAN
    publish = Publish(task_name, time.perf_counter(), span)
    publish.own = _publishing.set(publish)
    return publish


def on_publish(headers: dict[str, Any], task_name: str, queue: str) -> None:
    """Before a task message leaves (``before_task_publish``): name the publish's span after the routed queue and
    the task id, propagate the current trace (the producer span's) and stamp the publish time."""
    state = current()
    headers[PUBLISHED_AT_HEADER] = time.time()
    queue = routed_queue(queue)  # a countdown's routing key on RabbitMQ carries its delay
    publish = _publishing.get()
    if publish is None:
        # A message sent around ``Celery.send_task`` (nothing in the project does): counted, no span of its own.
        state.instruments.published.add(1, _attribute_set(task_name, queue))
        if state.task_spans is not None:
            inject(headers)
        return
    first = publish.queue is None
    if first:
        publish.queue = queue
    if state.task_spans is not None:
        if first:
            state.task_spans.set_destination(publish.span, task_name, queue, headers.get("id"))
        _inject(headers, publish.span)


def publish_finished(publish: Publish, error: BaseException | None = None, *, queue: str = "celery") -> None:
    """Count the publish (sent, or failed with its error type), record its duration and end its span; ``queue``
    names the destination of a publish that failed before Celery routed it."""
    state = current()
    duration = time.perf_counter() - publish.started
    task, destination = publish.task_name, publish.queue or queue
    span = publish.span
    # The sample carries the producer span as its exemplar.
    if error is None:
        state.instruments.published.add(1, _attribute_set(task, destination))
        state.instruments.publish_duration.record(
            duration, _attribute_set(task, destination, "outcome", "sent"), span.get_span_context()
        )
    else:
        state.instruments.publish_failed.add(1, _attribute_set(task, destination, "error_type", type(error).__name__))
        state.instruments.publish_duration.record(
            duration, _attribute_set(task, destination, "outcome", "failed"), span.get_span_context()
        )
        if state.task_spans is not None and span.is_recording():
            if publish.queue is None:
                state.task_spans.set_destination(span, task, destination, None)
            span.set_attribute("error.type", qualified_type(error))
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
    span.end()
    if publish.own is not None:
        _publishing.reset(publish.own)
