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
  are dropped, like the SDK does). Span limits are not applied: task spans carry a fixed, small set.
- Ended, a ``TaskSpan`` goes to the provider's batch span processor (``observability.telemetry.span_processor``) with
  the SDK's spans (bounded queue, export thread, flush at shutdown), and ``TaskSpanExporter`` encodes it by
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
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ResourceMessage
from opentelemetry.proto.trace.v1.trace_pb2 import Span, SpanFlags
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Decision, ParentBased
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types

__all__ = ["TaskSpan", "TaskSpanExporter", "TaskSpans", "qualified_type"]

_logger = logging.getLogger(__name__)

_FLAGS_HAS_IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_FLAGS_IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
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
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
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


class TaskSpanExporter(OTLPSpanExporter):
    """The OTLP/HTTP span exporter (configured by the standard ``OTEL_EXPORTER_OTLP_*`` variables) that also
    encodes ``TaskSpan``s under ``scope`` of ``resource`` (the tracer provider's)."""

    def __init__(self, resource: Resource, *, scope: str, **options: Any) -> None:
        super().__init__(**options)
        resource_message = ResourceMessage()
        _add_attributes(resource_message, resource.attributes)
        # Serialized once: ResourceSpans.resource (field 1) and ScopeSpans.scope (field 1).
        self._resource_field = _field(1, resource_message.SerializePartialToString())
        self._scope_field = _field(1, InstrumentationScope(name=scope).SerializePartialToString())
        #: id(template) -> (template, its bytes); the template is kept so that its id is not reused meanwhile.
        self._template_bytes: dict[int, tuple[Span, bytes]] = {}
        self._scratch = Span()

    def encode_bytes(self, spans: Sequence[ReadableSpan | TaskSpan]) -> bytes:
        """The serialized export request for a batch of SDK spans and ``TaskSpan``s.

        A ``TaskSpan`` is its template's bytes, serialized once, followed by the bytes of what varies (ids, times,
        attributes set during the run...): protobuf parses two concatenated messages as one merged message, the
        second's scalars overriding and its repeated fields appended, which is what ``MergeFrom`` of the template
        then setting the rest gives (test_lean_path_matches_the_sdk compares the parsed request with the SDK's).
        Copying the template per span and serializing it again was 1.3 of a publish span's 3.2 us."""
        task_spans = [span for span in spans if isinstance(span, TaskSpan)]
        payload = b""
        if len(task_spans) != len(spans):
            payload = encode_spans(
                [span for span in spans if not isinstance(span, TaskSpan)]
            ).SerializePartialToString()
        if task_spans:
            parts = [self._scope_field]
            scratch = self._scratch
            for task_span in task_spans:
                scratch.Clear()
                _encode_varying(task_span, scratch)
                parts.append(_field(2, self._template_of(task_span) + scratch.SerializePartialToString()))
            # ResourceSpans.scope_spans (2) in ExportTraceServiceRequest.resource_spans (1).
            payload += _field(1, self._resource_field + _field(2, b"".join(parts)))
        return payload

    def encode(self, spans: Sequence[ReadableSpan | TaskSpan]) -> ExportTraceServiceRequest:
        """One export request for a batch of SDK spans and ``TaskSpan``s, as a message."""
        request: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(self.encode_bytes(spans))
        return request

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        payload = self.encode_bytes(spans)
        # Sent by the SDK exporter's own HTTP client: endpoint, headers, TLS, compression and retries stay the
        # SDK's. ``_client`` is not public API: tests/test_task_spans.py fails if an upgrade moves it.
        result = self._client.export(payload)
        return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE

    def _template_of(self, task_span: TaskSpan) -> bytes:
        template = task_span.template
        cached = self._template_bytes.get(id(template))
        if cached is None or cached[0] is not template:
            if len(self._template_bytes) > 2048:  # templates are few (see TaskSpans._template)
                self._template_bytes.clear()
            cached = self._template_bytes[id(template)] = (template, template.SerializePartialToString())
        return cached[1]


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field ``number`` holding ``payload``."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _encode_varying(task_span: TaskSpan, span: Span) -> None:
    """Everything of ``task_span`` but its template into ``span``."""
    context, parent = task_span.context, task_span.parent
    span.trace_id = context.trace_id.to_bytes(16, "big")
    span.span_id = context.span_id.to_bytes(8, "big")
    span.flags = _FLAGS_HAS_IS_REMOTE
    if context.trace_state:
        span.trace_state = context.trace_state.to_header()
    if parent is not None:
        span.parent_span_id = parent.span_id.to_bytes(8, "big")
        if parent.is_remote:
            span.flags = _FLAGS_HAS_IS_REMOTE | _FLAGS_IS_REMOTE
    if task_span.name is not None:
        span.name = task_span.name
    span.start_time_unix_nano = task_span.start_time
    span.end_time_unix_nano = task_span.end_time
    _add_attributes(span, task_span.attributes)
    for name, timestamp, attributes in task_span.events:
        _add_attributes(span.events.add(name=name, time_unix_nano=timestamp), attributes)
    for link in task_span.links:
        link_message = span.links.add(
            trace_id=link.context.trace_id.to_bytes(16, "big"),
            span_id=link.context.span_id.to_bytes(8, "big"),
            flags=_FLAGS_HAS_IS_REMOTE | (_FLAGS_IS_REMOTE if link.context.is_remote else 0),
        )
        _add_attributes(link_message, link.attributes or {})
    status = task_span.status
    if status is not None and status.status_code is not StatusCode.UNSET:
        span.status.code = status.status_code.value
        if status.description:
            span.status.message = status.description


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
