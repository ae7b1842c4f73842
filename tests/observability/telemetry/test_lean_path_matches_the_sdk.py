"""The lean telemetry path pinned to the SDK it stands in for: the same task run's span, the same publish's span,
and the same stream of task metrics, leave as the same OTLP protobuf through both paths - ids and timestamps
aside.

The lean path (``task_spans``, ``in_process_metrics``) exists because it costs a worker child less than half the
SDK's CPU per run (docs/performance.md, "The telemetry path: SDK or hand-written"). An SDK upgrade that changes
what the SDK sends (an attribute, a flag, a field, the bucket rule, the exemplars) fails here instead of the two
paths silently diverging.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.propagate import extract
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult, MetricsData
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, StatusCode, TraceFlags

from observability.telemetry.in_process_metrics import (
    InProcessCounter,
    InProcessHistogram,
    OTLPMetricExporterWithHistograms,
)
from observability.telemetry.task_span_export import TaskSpanExporter
from observability.telemetry.task_spans import TaskSpan, TaskSpans

SCOPE = "marketplace"
RESOURCE = Resource.create({"service.name": "marketplace-worker", "service.instance.id": "test-1"})
TASK, QUEUE = "promotions.tasks.check_active_promos", "celery"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
REPLAYED = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
MESSAGE_ID = "6f1c2d3e-0000-4000-8000-000000000001"
BOUNDS = (0.001, 0.01, 0.1, 1.0)
#: What ``providers.setup`` gives every task span: the broker's attributes and the process's client id.
CONSTANT = {"server.address": "127.0.0.1", "server.port": 6379, "messaging.client.id": "celery@test"}


class _Collect(SpanProcessor):
    def __init__(self) -> None:
        self.ended: list[TaskSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        assert isinstance(span, TaskSpan)
        self.ended.append(span)


def _a_failed_run(span: trace.Span) -> None:
    """What ``observability.telemetry.runs`` sets on a run's span before ending it, for a final failure."""
    span.set_attribute("celery.outcome", "dead_lettered")
    span.set_attribute("error.type", "observability.errors.PermanentError")
    span.set_status(StatusCode.ERROR, "bad input")
    span.end()


def _without_ids_and_times(request: ExportTraceServiceRequest) -> ExportTraceServiceRequest:
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                span.span_id = b""
                span.start_time_unix_nano = span.end_time_unix_nano = 0
    return request


def test_a_task_runs_span_leaves_as_the_sdk_tracer_sends_the_same_span():
    """One run of a task with a remote parent, a replay link, run attributes and an error status: started by the
    SDK's tracer and by ``TaskSpans``, ended, encoded by each path's exporter - the same protobuf."""
    provider = TracerProvider(resource=RESOURCE, shutdown_on_exit=False)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    parent = extract({"traceparent": TRACEPARENT})
    links = [Link(REPLAYED, {"dead_letter.replay_of": "41"})]

    _a_failed_run(
        provider.get_tracer(SCOPE).start_span(
            f"run {QUEUE}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "celery",
                **CONSTANT,
                "messaging.operation.type": "process",
                "messaging.operation.name": "run",
                "messaging.destination.name": QUEUE,
                "celery.action": "run",
                "celery.task_name": TASK,
                "messaging.message.id": MESSAGE_ID,
                "celery.retries": 2,
            },
            links=links,
        )
    )
    collected = _Collect()
    lean = TaskSpans(provider, collected, CONSTANT)
    _a_failed_run(
        lean.start(
            TASK, QUEUE, parent=parent, message_id="6f1c2d3e-0000-4000-8000-000000000001", retries=2, links=links
        )
    )

    [sdk_span] = memory.get_finished_spans()
    [task_span] = collected.ended
    sdk_request = _without_ids_and_times(encode_spans([sdk_span]))
    lean_request = _without_ids_and_times(TaskSpanExporter(RESOURCE, scope=SCOPE).encode([task_span]))
    assert lean_request == sdk_request


def test_a_failed_publishs_span_leaves_as_the_sdk_tracer_sends_the_same_span():
    """A publish from inside a run (its parent the current span), routed to a queue, failing with an exception
    event and an error status: started by the SDK's tracer and by ``TaskSpans.start_send``, the same protobuf."""
    provider = TracerProvider(resource=RESOURCE, shutdown_on_exit=False)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    run = trace.NonRecordingSpan(SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1)))
    error = ConnectionRefusedError(111, "Connection refused")

    def failed(span: trace.Span) -> None:
        span.set_attribute("error.type", "ConnectionRefusedError")
        span.record_exception(error, timestamp=1)
        span.set_status(StatusCode.ERROR, "[Errno 111] Connection refused")
        span.end()

    with trace.use_span(run):
        failed(
            provider.get_tracer(SCOPE).start_span(
                f"send {QUEUE}",
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "celery",
                    **CONSTANT,
                    "messaging.operation.type": "send",
                    "messaging.operation.name": "send",
                    "messaging.destination.name": QUEUE,
                    "celery.action": "apply_async",
                    "celery.task_name": TASK,
                    "messaging.message.id": MESSAGE_ID,
                },
            )
        )
        collected = _Collect()
        lean = TaskSpans(provider, collected, CONSTANT)
        span = lean.start_send(TASK)
        lean.set_destination(span, TASK, QUEUE, MESSAGE_ID)
        failed(span)

    [sdk_span] = memory.get_finished_spans()
    [task_span] = collected.ended
    sdk_request = _without_ids_and_times(encode_spans([sdk_span]))
    lean_request = _without_ids_and_times(TaskSpanExporter(RESOURCE, scope=SCOPE).encode([task_span]))
    assert lean_request.resource_spans[0].scope_spans[0].spans[0].parent_span_id == (0xDEF).to_bytes(8, "big")
    assert lean_request == sdk_request


def _record_a_stream(counter: Any, histogram: Any, run: trace.Span) -> None:
    """A few runs' worth of the two task metrics: outcomes by attributes, values on and between bounds, some
    inside the sampled span ``run`` (exemplars)."""
    succeeded = {"task": TASK, "queue": QUEUE, "outcome": "succeeded"}
    failed = {"task": TASK, "queue": QUEUE, "outcome": "failed"}
    for value in (0.0005, 0.001, 0.05, 0.1, 7.0):
        counter.add(1, succeeded)
        histogram.record(value, succeeded)
    counter.add(2, failed)
    with trace.use_span(run, end_on_exit=False):
        histogram.record(0.5, failed)
        histogram.record(0.05, succeeded)


def _without_times(request: ExportMetricsServiceRequest) -> ExportMetricsServiceRequest:
    """``request`` with its timestamps cleared and each point's attributes by key (OTLP attributes are a map: the
    in-process series keep theirs as a set)."""
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points = metric.sum.data_points if metric.HasField("sum") else metric.histogram.data_points
                for point in points:
                    point.start_time_unix_nano = point.time_unix_nano = 0
                    attributes = sorted(point.attributes, key=lambda kv: kv.key)
                    copies = [type(kv)() for kv in attributes]
                    for copy, kv in zip(copies, attributes, strict=True):
                        copy.CopyFrom(kv)
                    del point.attributes[:]
                    point.attributes.extend(copies)
                    for exemplar in point.exemplars:
                        exemplar.time_unix_nano = 0
    return request


def _sorted_metrics(request: ExportMetricsServiceRequest) -> dict[str, str]:
    """Each metric's encoding by name, its points in a stable order (a stream's order is not part of OTLP)."""
    out: dict[str, str] = {}
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            assert scope_metrics.scope.name == SCOPE
            for metric in scope_metrics.metrics:
                points = metric.sum.data_points if metric.HasField("sum") else metric.histogram.data_points
                ordered = sorted(points, key=lambda p: p.SerializeToString(deterministic=True))
                copies = [type(p)() for p in ordered]
                for copy, point in zip(copies, ordered, strict=True):
                    copy.CopyFrom(point)
                del points[:]
                points.extend(copies)
                out[metric.name] = str(metric)  # the text format: a failure shows which field differs
    return out


def test_the_task_metrics_stream_leaves_as_the_sdks_instruments_send_it(monkeypatch: pytest.MonkeyPatch):
    """The run counter and the duration histogram, fed the same measurements: the SDK's synchronous counter and
    histogram (with the project's bucket view) and the in-process ones through their exporter encode to the same
    OTLP metrics - names, units, descriptions, temporality, attributes, counts, buckets, sums, min/max and the
    exemplars of the sampled span."""
    run = TracerProvider(shutdown_on_exit=False).get_tracer("tests").start_span("run")
    counter, counter_unit, counter_text = "celery.tasks.finished", "{task}", "Task runs finished, by outcome"
    histogram, histogram_unit, histogram_text = "celery.task.duration", "s", "Task run duration"

    sdk_reader = InMemoryMetricReader()
    views = [View(instrument_name="celery.task.duration", aggregation=ExplicitBucketHistogramAggregation(BOUNDS))]
    sdk_meter = MeterProvider(
        resource=RESOURCE, metric_readers=[sdk_reader], views=views, shutdown_on_exit=False
    ).get_meter(SCOPE)
    _record_a_stream(
        sdk_meter.create_counter(counter, unit=counter_unit, description=counter_text),
        sdk_meter.create_histogram(histogram, unit=histogram_unit, description=histogram_text),
        run,
    )
    sdk_data = sdk_reader.get_metrics_data()
    assert sdk_data is not None

    lean_reader = InMemoryMetricReader()
    lean_meter = MeterProvider(resource=RESOURCE, metric_readers=[lean_reader], shutdown_on_exit=False).get_meter(SCOPE)
    lean_histogram = InProcessHistogram(histogram, unit=histogram_unit, description=histogram_text, bounds=BOUNDS)
    _record_a_stream(
        InProcessCounter(lean_meter, counter, unit=counter_unit, description=counter_text), lean_histogram, run
    )
    sent: list[MetricsData] = []

    def the_network(self: OTLPMetricExporter, metrics_data: MetricsData, *args: Any, **kwargs: Any) -> Any:
        sent.append(metrics_data)
        return MetricExportResult.SUCCESS

    monkeypatch.setattr(OTLPMetricExporter, "export", the_network)
    lean_data = lean_reader.get_metrics_data()
    assert lean_data is not None
    OTLPMetricExporterWithHistograms([lean_histogram], resource=RESOURCE, scope=SCOPE).export(lean_data)

    [lean_sent] = sent
    sdk_metrics = _sorted_metrics(_without_times(encode_metrics(sdk_data)))
    lean_metrics = _sorted_metrics(_without_times(encode_metrics(lean_sent)))
    assert set(lean_metrics) == {"celery.tasks.finished", "celery.task.duration"}
    assert lean_metrics == sdk_metrics
    assert _resources(encode_metrics(lean_sent)) == _resources(encode_metrics(sdk_data))


def _resources(request: ExportMetricsServiceRequest) -> list[Mapping[str, str]]:
    return [
        {kv.key: kv.value.string_value for kv in resource_metrics.resource.attributes}
        for resource_metrics in request.resource_metrics
    ]
