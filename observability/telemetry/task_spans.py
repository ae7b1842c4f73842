"""Task spans on a lean path: the OTLP data of an SDK span, for a fraction of a worker child's CPU.

Two spans per task message, with the OpenTelemetry messaging attributes: its publish (``send <queue>``, kind
PRODUCER, in every producer) and each run (``run <queue>``, kind CONSUMER, in a worker child), thousands per second
per process. The SDK's general path costs about 60 us per span in-process (start and end 22 us, OTLP encoding
40 us; 2-core Intel Xeon, ``python -m bench.hooks``) and a worker child about twice that; this path about 15 us
(start and end 7.5, encoding 7.7):

- ``TaskSpans.start`` (a run) and ``TaskSpans.start_send`` (a publish) return a ``TaskSpan``, an API span
  (``opentelemetry.trace.Span``). A run's is made current by the caller, so child spans (SQL), log lines, metric
  exemplars and the messages it publishes see its context; a publish's is not (its context goes into the
  message's headers; ``observability.telemetry.publishes`` says why). Its ids come from the tracer provider's id
  generator and the provider's sampler decides, as for any span; an unsampled one is a non-recording span that still
  propagates its ids.
- Attributes, events, links and status set during the run are kept (types as the API allows; other values
  are dropped, like the SDK does). Span limits are not applied: task spans carry a fixed, small set. The text
  of an error - a status description, an exception's message and stack trace - has its URL credentials masked
  (``observability.logs.redaction``), as in log lines: a broker or provider error can quote its URL.
- Ended, a ``TaskSpan`` goes to the provider's batch span processor (``observability.telemetry.span_processor``) with
  the SDK's spans (bounded queue, export thread, flush at shutdown), and ``TaskSpanExporter``
  (``observability.telemetry.task_span_export``) encodes it by
  copying a protobuf template made once per (operation, task, queue) - name, kind and the constant attributes -
  and setting what varies. The batch's SDK spans are encoded by the SDK, and the whole batch leaves in one request
  through the SDK's HTTP client.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Decision, ParentBased
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types

from observability.logs.redaction import mask_url_credentials

__all__ = ["TaskSpan", "TaskSpans", "qualified_type"]

_logger = logging.getLogger(__name__)

_SCALARS = (str, bool, int, float)


class TaskSpan(trace.Span):
    """The recording span of one task run; ``TaskSpanExporter`` encodes it (see the module docstring)."""

    def __init__(
        self,
        *,
        template: Span,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, types.AnyValue],
        links: Sequence[Link],
        processor: SpanProcessor,
    ) -> None:
        self.template = template
        self.context = context
        self.parent = parent
        self.attributes = attributes
        self.links = links
        self.name: str | None = None  # set only when renamed: the template holds the name
        self.events: list[tuple[str, int, Mapping[str, types.AnyValue]]] = []
        self.status: Status | None = None
        self.start_time = time.time_ns()
        self.end_time = 0
        self._processor = processor

    def get_span_context(self) -> SpanContext:
        return self.context

    def is_recording(self) -> bool:
        return not self.end_time

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self.end_time:
            return
        if _is_valid(value):
            self.attributes[key] = value
        else:
            _logger.warning("Task span attribute %r dropped: %r is not a valid attribute value", key, value)

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(self, name: str, attributes: types.Attributes = None, timestamp: int | None = None) -> None:
        if self.end_time:
            return
        valid = {key: value for key, value in (attributes or {}).items() if _is_valid(value)}
        self.events.append((name, timestamp or time.time_ns(), valid))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if not self.end_time and context.is_valid:
            self.links = [*self.links, Link(context, attributes)]

    def update_name(self, name: str) -> None:
        if not self.end_time:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self.end_time:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.description:
            status = Status(status.status_code, mask_url_credentials(status.description))
        if self.status is None or self.status.status_code is not StatusCode.OK:  # OK is final, as in the SDK
            self.status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        event: dict[str, types.AnyValue] = {
            "exception.type": qualified_type(exception),
            "exception.message": mask_url_credentials(str(exception)),
            "exception.stacktrace": mask_url_credentials("".join(traceback.format_exception(exception))),
            "exception.escaped": str(escaped),
            **(attributes or {}),
        }
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self.end_time:
            return
        self.end_time = end_time or time.time_ns()
        # The processor queues it for its export thread; it reads nothing but ``context`` until then.
        self._processor.on_end(self)  # type: ignore[arg-type]


def qualified_type(error: BaseException) -> str:
    """The canonical class name of ``error`` (``kombu.exceptions.OperationalError``; ``ValueError`` for builtins):
    the spans' ``error.type`` and their exception events' ``exception.type``."""
    kind = type(error)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _is_valid(value: object) -> bool:
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        kinds = {type(item) for item in value if item is not None}
        return len(kinds) <= 1 and kinds <= {str, bool, int, float}
    return False


class TaskSpans:
    """Starts task spans for one tracer provider (its sampler, id generator and span processor); ``constant``
    attributes (the broker's, the client id) go on every one."""

    def __init__(
        self, provider: TracerProvider, processor: SpanProcessor, constant: Mapping[str, types.AnyValue] | None = None
    ) -> None:
        self._sampler = provider.sampler
        self._default_sampler = _is_default_sampler(provider.sampler)
        self._ids = provider.id_generator
        self._processor = processor
        self._constant = dict(constant or {})
        self._templates: dict[tuple[str, str, str], Span] = {}

    def start(
        self,
        task_name: str,
        queue: str,
        *,
        parent: Context | None,
        message_id: str,
        retries: int,
        links: Sequence[Link] = (),
    ) -> trace.Span:
        """The span of a run of ``task_name`` from ``queue``, child of the span in ``parent`` (the message's
        propagated context) if there is one; not made current here."""
        parent_context = trace.get_current_span(parent).get_span_context() if parent is not None else None
        if parent_context is not None and not parent_context.is_valid:
            parent_context = None
        trace_id = parent_context.trace_id if parent_context else self._ids.generate_trace_id()
        attributes: dict[str, types.AnyValue] = {"messaging.message.id": message_id, "celery.retries": retries}
        if self._default_sampler:
            context = self._default_context(trace_id, parent_context)
        else:
            sampling = self._sampler.should_sample(parent, trace_id, f"run {queue}", SpanKind.CONSUMER, None, links)
            context = self._context(trace_id, sampling)
            attributes.update(sampling.attributes or {})
        if not context.trace_flags.sampled:
            return trace.NonRecordingSpan(context)
        return TaskSpan(
            template=self._template("run", task_name, queue),
            context=context,
            parent=parent_context,
            attributes=attributes,
            links=links,
            processor=self._processor,
        )

    def start_send(self, task_name: str) -> trace.Span:
        """The span of a publish of ``task_name``, child of the current span if there is one. Its queue is known
        only once Celery has routed the message: ``set_destination`` names it (the sampler sees the name ``send``)."""
        parent_context: SpanContext | None = trace.get_current_span().get_span_context()
        if parent_context is not None and not parent_context.is_valid:
            parent_context = None
        trace_id = parent_context.trace_id if parent_context else self._ids.generate_trace_id()
        attributes: dict[str, types.AnyValue] = {}
        if self._default_sampler:
            context = self._default_context(trace_id, parent_context)
        else:
            sampling = self._sampler.should_sample(None, trace_id, "send", SpanKind.PRODUCER, None, ())
            context = self._context(trace_id, sampling)
            attributes.update(sampling.attributes or {})
        if not context.trace_flags.sampled:
            return trace.NonRecordingSpan(context)
        return TaskSpan(
            template=self._template("send", task_name, ""),
            context=context,
            parent=parent_context,
            attributes=attributes,
            links=(),
            processor=self._processor,
        )

    def set_destination(self, span: trace.Span, task_name: str, queue: str, message_id: str | None) -> None:
        """Name the queue and message of a publish's span (``start_send``)."""
        if isinstance(span, TaskSpan) and not span.end_time:
            span.template = self._template("send", task_name, queue)
            if message_id:
                span.attributes["messaging.message.id"] = message_id

    def _context(self, trace_id: int, sampling: Any) -> SpanContext:
        sampled = sampling.decision is Decision.RECORD_AND_SAMPLE
        return SpanContext(
            trace_id,
            self._ids.generate_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT),
            trace_state=sampling.trace_state,
        )

    def _default_context(self, trace_id: int, parent: SpanContext | None) -> SpanContext:
        # The SDK's default sampler, ParentBased(ALWAYS_ON), decided without building its SamplingResult: sampled
        # unless the parent is not, the parent's trace state kept (test_task_spans pins it to the SDK's).
        sampled = parent is None or parent.trace_flags.sampled
        return SpanContext(
            trace_id,
            self._ids.generate_span_id(),
            is_remote=False,
            trace_flags=_SAMPLED if sampled else _NOT_SAMPLED,
            trace_state=parent.trace_state if parent is not None else None,
        )

    def _template(self, operation: str, task_name: str, queue: str) -> Span:
        key = (operation, task_name, queue)
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) > 1024:  # task names and queues are few; bound the odd dynamic ones
                self._templates.clear()
            template = _template(operation, task_name, queue, self._constant)
            self._templates[key] = template
        return template


_SAMPLED, _NOT_SAMPLED = TraceFlags(TraceFlags.SAMPLED), TraceFlags(TraceFlags.DEFAULT)


def _is_default_sampler(sampler: object) -> bool:
    """Whether ``sampler`` is the SDK's default, ``ParentBased(ALWAYS_ON)`` (``OTEL_TRACES_SAMPLER`` unset or
    ``parentbased_always_on``). Its delegates are private attributes: test_task_spans fails if they move."""
    return (
        type(sampler) is ParentBased
        and getattr(sampler, "_root", None) is ALWAYS_ON
        and getattr(sampler, "_remote_parent_sampled", None) is ALWAYS_ON
        and getattr(sampler, "_remote_parent_not_sampled", None) is ALWAYS_OFF
        and getattr(sampler, "_local_parent_sampled", None) is ALWAYS_ON
        and getattr(sampler, "_local_parent_not_sampled", None) is ALWAYS_OFF
    )


def _template(operation: str, task_name: str, queue: str, constant: Mapping[str, types.AnyValue]) -> Span:
    """The protobuf of a span's constant part. Named ``{messaging.operation.name} {destination}`` as the messaging
    conventions say (``send promos``, ``run promos``); the task name is ``celery.task_name``."""
    if operation == "send":
        kind, operation_type, action = Span.SpanKind.SPAN_KIND_PRODUCER, "send", "apply_async"
    else:
        kind, operation_type, action = Span.SpanKind.SPAN_KIND_CONSUMER, "process", "run"
    template = Span(name=f"{operation} {queue}" if queue else operation, kind=kind)
    template.status.SetInParent()  # an unset status is sent as an empty one, as the SDK does
    attributes: dict[str, types.AnyValue] = {
        "messaging.system": "celery",
        **constant,
        "messaging.operation.type": operation_type,
        "messaging.operation.name": operation,
    }
    if queue:
        attributes["messaging.destination.name"] = queue
    attributes["celery.action"] = action
    attributes["celery.task_name"] = task_name
    _add_attributes(template, attributes)
    return template


def _add_attributes(message: Any, attributes: Mapping[str, types.AnyValue]) -> None:
    """Append ``attributes`` to the ``attributes`` field (a repeated ``KeyValue``) of ``message``."""
    for key, value in attributes.items():
        _set_value(message.attributes.add(key=key).value, value)


def _set_value(target: AnyValue, value: object) -> None:
    if value is None:  # a None inside a sequence: an empty value, as the SDK sends it
        return
    if isinstance(value, bool):  # before int: a bool is an int
        target.bool_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, Sequence):
        array = target.array_value
        array.SetInParent()  # an empty sequence is still an array
        for item in value:
            _set_value(array.values.add(), item)
    else:
        target.string_value = str(value)
