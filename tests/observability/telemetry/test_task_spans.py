"""Task spans on the lean path (observability.telemetry.task_spans): on the wire, exactly what the SDK would send for
the same span; the provider's sampler and ids honoured; sent with the batch's SDK spans in one request
through the SDK's own HTTP client, to a real local OTLP receiver."""

from __future__ import annotations

import logging

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.propagate import extract
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AnyValue

from observability.telemetry.task_span_export import TaskSpanExporter
from observability.telemetry.task_spans import TaskSpan, TaskSpans
from tests.conftest import wait_for
from tests.otlp_receiver import OtlpReceiver

SCOPE = "marketplace"
RESOURCE = Resource.create({"service.name": "marketplace-worker", "service.instance.id": "test-1"})
TRACE_ID, PARENT_SPAN_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_SPAN_ID:016x}-01"


class Collect(SpanProcessor):
    def __init__(self) -> None:
        self.ended: list[TaskSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        assert isinstance(span, TaskSpan)
        self.ended.append(span)


def task_spans(**provider_options: object) -> tuple[TaskSpans, Collect]:
    processor = Collect()
    return TaskSpans(TracerProvider(resource=RESOURCE, **provider_options), processor), processor  # type: ignore[arg-type]


def the_sdks_encoding_of(span: TaskSpan) -> ExportTraceServiceRequest:
    """The same span built as an SDK ``ReadableSpan`` (attributes in the order the task span sends them)."""
    attributes: dict[str, AnyValue] = {kv.key: kv.value.string_value for kv in span.template.attributes}
    attributes.update(span.attributes)
    sdk_span = ReadableSpan(
        name=span.name or span.template.name,
        context=span.context,
        parent=span.parent,
        resource=RESOURCE,
        attributes=attributes,
        events=[],
        links=span.links,
        kind=SpanKind.CONSUMER,
        instrumentation_scope=InstrumentationScope(SCOPE),
        status=span.status or Status(StatusCode.UNSET),
        start_time=span.start_time,
        end_time=span.end_time,
    )
    return encode_spans([sdk_span])


def test_a_task_span_encodes_exactly_as_the_sdk_encodes_the_same_span():
    """Ids, remote parent flag, name, kind, times, constant and run attributes, links and error status: the
    protobuf the collector receives is byte for byte the SDK's."""
    spans, processor = task_spans()
    replayed = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    span = spans.start(
        "promotions.tasks.check_active_promos",
        "celery",
        parent=extract({"traceparent": TRACEPARENT}),
        message_id="6f1c2d3e-0000-4000-8000-000000000001",
        retries=2,
        links=[Link(replayed, {"dead_letter.replay_of": "41"})],
    )
    span.set_attribute("celery.outcome", "dead_lettered")
    span.set_attribute("error.type", "PermanentError")
    span.set_status(Status(StatusCode.ERROR, "boom"))
    span.end()

    [ended] = processor.ended
    ours = TaskSpanExporter(RESOURCE, scope=SCOPE).encode([ended])
    assert ended.parent is not None and ended.parent.span_id == PARENT_SPAN_ID
    assert ended.context.trace_id == TRACE_ID
    assert ours == the_sdks_encoding_of(ended)
    assert ours.resource_spans[0].scope_spans[0].spans[0].flags == 0x300  # has-is-remote and is-remote bits


def test_a_root_run_gets_new_ids_from_the_providers_generator_and_the_sdks_encoding():
    spans, processor = task_spans()
    span = spans.start("tests.echo", "observed", parent=None, message_id="m-1", retries=0)
    span.set_attribute("celery.outcome", "succeeded")
    span.end()

    [ended] = processor.ended
    assert ended.parent is None and ended.context.is_valid and ended.context.trace_flags.sampled
    assert TaskSpanExporter(RESOURCE, scope=SCOPE).encode([ended]) == the_sdks_encoding_of(ended)


def test_the_providers_sampler_decides_and_an_unsampled_run_still_propagates_its_ids():
    spans, processor = task_spans(sampler=ParentBased(ALWAYS_OFF))
    root = spans.start("tests.echo", "celery", parent=None, message_id="m-1", retries=0)
    unsampled_parent = extract({"traceparent": TRACEPARENT[:-2] + "00"})
    child = spans.start("tests.echo", "celery", parent=unsampled_parent, message_id="m-2", retries=0)
    root.end()
    child.end()

    assert not root.is_recording() and not root.get_span_context().trace_flags.sampled
    assert root.get_span_context().is_valid
    assert child.get_span_context().trace_id == TRACE_ID
    assert processor.ended == []


def test_what_the_run_sets_is_kept_and_what_the_api_forbids_is_dropped(caplog: pytest.LogCaptureFixture):
    """Attributes, events, renames and status follow the API's rules: invalid values are dropped with a
    warning, an OK status is final, nothing changes after end."""
    spans, processor = task_spans()
    span = spans.start("tests.echo", "celery", parent=None, message_id="m-1", retries=0)
    span.set_attributes({"promos.activated": 3, "promo.ids": [1, None, 2], "ratio": 0.5, "flag": True})
    with caplog.at_level(logging.WARNING, logger="observability.telemetry.task_spans"):
        span.set_attribute("bad", {"a": "mapping"})
    span.add_event("batch.done", {"rows": 10})
    span.record_exception(ValueError("bad input"))
    span.update_name("renamed")
    span.set_status(StatusCode.OK)
    span.set_status(Status(StatusCode.ERROR, "too late"))
    span.end()
    span.set_attribute("after", "end")

    [ended] = processor.ended
    encoded = TaskSpanExporter(RESOURCE, scope=SCOPE).encode([ended]).resource_spans[0].scope_spans[0].spans[0]
    attributes = {kv.key: kv.value for kv in encoded.attributes}
    assert attributes["promos.activated"].int_value == 3
    assert [v.WhichOneof("value") and v.int_value for v in attributes["promo.ids"].array_value.values] == [1, None, 2]
    assert attributes["ratio"].double_value == 0.5 and attributes["flag"].bool_value is True
    assert "bad" not in attributes and "after" not in attributes
    assert "dropped" in caplog.text
    assert [event.name for event in encoded.events] == ["batch.done", "exception"]
    exception = {kv.key: kv.value.string_value for kv in encoded.events[1].attributes}
    assert exception["exception.type"] == "ValueError" and exception["exception.message"] == "bad input"
    assert encoded.name == "renamed"
    assert encoded.status.code == StatusCode.OK.value


def test_an_errors_text_has_its_url_credentials_masked():
    """A broker or provider error quoting its URL: the password reaches neither the status description nor
    the exception event's message or stack trace."""
    spans, processor = task_spans()
    span = spans.start_send("tests.echo")
    error = ConnectionError("Cannot connect to redis://:hunter2@10.0.0.5:6379/0 nor amqp://guest:hunter2@mq//")
    try:
        raise error
    except ConnectionError:
        span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, str(error)))
    span.end()

    [ended] = processor.ended
    encoded = TaskSpanExporter(RESOURCE, scope=SCOPE).encode([ended]).resource_spans[0].scope_spans[0].spans[0]
    exception = {kv.key: kv.value.string_value for kv in encoded.events[0].attributes}
    texts = [encoded.status.message, exception["exception.message"], exception["exception.stacktrace"]]
    assert all("hunter2" not in text and "********@" in text for text in texts), texts
    assert "redis://:********@10.0.0.5:6379/0" in encoded.status.message
    assert "amqp://guest:********@mq//" in exception["exception.message"]


def test_task_spans_and_sdk_spans_leave_in_one_request_through_the_sdks_http_client(otlp_receiver: OtlpReceiver):
    """A batch holding a task span and an SQL span started inside it reaches a real receiver over HTTP:
    same resource, the SQL span a child of the task span."""
    provider = TracerProvider(resource=RESOURCE)
    processor = BatchSpanProcessor(
        TaskSpanExporter(RESOURCE, scope=SCOPE, endpoint=f"{otlp_receiver.endpoint}/v1/traces")
    )
    provider.add_span_processor(processor)
    spans = TaskSpans(provider, processor)
    run = spans.start("tests.echo", "celery", parent=None, message_id="m-1", retries=0)
    with trace.use_span(run, end_on_exit=True):
        provider.get_tracer("psycopg").start_span("SELECT marketplace").end()
    provider.shutdown()

    received = wait_for(lambda: otlp_receiver.spans if len(otlp_receiver.spans) == 2 else None, what="both spans")
    task_span = next(s for s in received if s.name == "run celery")
    sql_span = next(s for s in received if s.name == "SELECT marketplace")
    assert sql_span.parent_span_id == task_span.span_id and sql_span.trace_id == task_span.trace_id
    assert task_span.resource == sql_span.resource == dict(RESOURCE.attributes)
    assert task_span.attributes["messaging.message.id"] == "m-1"


class _NotTheDefault(ParentBased):
    """``ParentBased(ALWAYS_ON)`` under another type: ``TaskSpans`` asks it, as it asks any sampler but the default."""


@pytest.mark.parametrize(
    "parent",
    [
        None,
        SpanContext(TRACE_ID, PARENT_SPAN_ID, is_remote=True, trace_flags=TraceFlags(1)),
        SpanContext(TRACE_ID, PARENT_SPAN_ID, is_remote=True, trace_flags=TraceFlags(0)),
        SpanContext(TRACE_ID, PARENT_SPAN_ID, is_remote=False, trace_flags=TraceFlags(1)),
        SpanContext(TRACE_ID, PARENT_SPAN_ID, is_remote=False, trace_flags=TraceFlags(0)),
        SpanContext(
            TRACE_ID, PARENT_SPAN_ID, is_remote=True, trace_flags=TraceFlags(1),
            trace_state=trace.TraceState([("vendor", "value")]),
        ),
    ],
    ids=["root", "remote-sampled", "remote-unsampled", "local-sampled", "local-unsampled", "trace-state"],
)  # fmt: skip
def test_the_default_samplers_shortcut_decides_as_the_sdks_sampler(parent):
    """The SDK's default sampler is decided without calling it (``TaskSpans._default_context``): for every kind of
    parent, run and publish spans are sampled, or not, and carry the trace state exactly as the SDK's own
    ``ParentBased(ALWAYS_ON)`` decides - which also pins the sampler's private delegates the shortcut reads."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    from observability.telemetry.task_spans import _is_default_sampler

    default, _ = task_spans()
    asked, _ = task_spans(sampler=_NotTheDefault(ALWAYS_ON))
    assert _is_default_sampler(TracerProvider().sampler) and not _is_default_sampler(asked._sampler)
    context = trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent is not None else None
    for spans in (default, asked):
        run = spans.start("tests.echo", "celery", parent=context, message_id="m", retries=0).get_span_context()
        with trace.use_span(trace.NonRecordingSpan(parent) if parent is not None else trace.INVALID_SPAN):
            send = spans.start_send("tests.echo").get_span_context()
        decided = [(c.trace_flags.sampled, c.trace_state, c.trace_id == TRACE_ID) for c in (run, send)]
        if spans is default:
            shortcut = decided
    assert shortcut == decided


def test_a_publishs_traceparent_is_what_the_sdks_propagator_writes():
    """With the default propagator and no baggage the producer formats ``traceparent``/``tracestate`` itself; the
    headers are the ones ``inject`` writes, sampled or not. With baggage in the context, ``inject`` writes them (and
    the baggage). This also pins the composite propagator's private list the shortcut reads."""
    from opentelemetry import baggage
    from opentelemetry import context as otel_context
    from opentelemetry.propagate import inject

    from observability.telemetry.publishes import _inject, _is_default_textmap

    assert _is_default_textmap()
    for flags, state in ((1, None), (0, None), (1, trace.TraceState([("vendor", "value")]))):
        span = trace.NonRecordingSpan(SpanContext(TRACE_ID, 0x1234, False, TraceFlags(flags), state))
        ours: dict[str, object] = {}
        theirs: dict[str, object] = {}
        with trace.use_span(span):
            _inject(ours, span)
            inject(theirs)
        assert ours == theirs and "traceparent" in ours
    token = otel_context.attach(baggage.set_baggage("tenant", "t-1"))
    try:
        with_baggage: dict[str, object] = {}
        with trace.use_span(span):
            _inject(with_baggage, span)
        assert with_baggage["baggage"] == "tenant=t-1" and "traceparent" in with_baggage
    finally:
        otel_context.detach(token)
