"""``TaskSpanExporter``: the OTLP/HTTP span exporter that also encodes the lean path's ``TaskSpan``s
(``observability.telemetry.task_spans``) - each from its template's bytes, serialized once, and what varies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ResourceMessage
from opentelemetry.proto.trace.v1.trace_pb2 import Span, SpanFlags
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import StatusCode

from observability.telemetry.task_spans import TaskSpan, _add_attributes

__all__ = ["TaskSpanExporter"]

_FLAGS_HAS_IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_FLAGS_IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK


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
