"""Task metrics summed in-process (observability.telemetry.in_process_metrics): the histogram's points are the SDK's for
the same measurements, its exemplars follow the SDK's defaults, and the exporter sends them with the SDK's own
metrics to a real local OTLP receiver."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from observability.telemetry.in_process_metrics import InProcessHistogram, OTLPMetricExporterWithHistograms
from tests.conftest import wait_for
from tests.otlp_receiver import OtlpReceiver

BOUNDS = (0.001, 0.01, 0.1, 1.0)
#: Below the first bound, on a bound (its own bucket, as the SDK counts), between bounds, above the last.
VALUES = (0.0005, 0.001, 0.05, 0.1, 0.5, 1.0, 7.0)
TASK = {"task": "tests.echo", "queue": "celery"}
OTHER = {"task": "tests.echo", "queue": "celery", "outcome": "succeeded"}


def histogram() -> InProcessHistogram:
    return InProcessHistogram("celery.task.duration", unit="s", description="Task run duration", bounds=BOUNDS)


def points_by_outcome(metric: Metric | None) -> dict[object, HistogramDataPoint]:
    assert metric is not None and isinstance(metric.data, Histogram)
    return {point.attributes.get("outcome") if point.attributes else None: point for point in metric.data.data_points}


def the_sdks_points(values: tuple[float, ...]) -> dict[object, HistogramDataPoint]:
    reader = InMemoryMetricReader()
    views = [View(instrument_name="h", aggregation=ExplicitBucketHistogramAggregation(BOUNDS))]
    sdk = (
        MeterProvider(metric_readers=[reader], views=views, shutdown_on_exit=False).get_meter("t").create_histogram("h")
    )
    for value in values:
        sdk.record(value, TASK)
        sdk.record(value * 2, OTHER)
    data = reader.get_metrics_data()
    assert data is not None
    [metric] = data.resource_metrics[0].scope_metrics[0].metrics
    return points_by_outcome(metric)


def test_the_histogram_counts_as_the_sdks_histogram_counts():
    """Same buckets (a value on a bound counts in that bound's bucket), count, sum, min and max per series."""
    ours = histogram()
    for value in VALUES:
        ours.record(value, TASK)
        ours.record(value * 2, OTHER)

    metric = ours.collect()
    assert metric is not None and metric.name == "celery.task.duration" and metric.unit == "s"
    expected = the_sdks_points(VALUES)
    points = points_by_outcome(metric)
    assert points.keys() == expected.keys()
    for key, point in points.items():
        sdk_point = expected[key]
        assert list(point.bucket_counts) == list(sdk_point.bucket_counts)
        assert list(point.explicit_bounds) == list(sdk_point.explicit_bounds)
        assert (point.count, point.sum, point.min, point.max) == pytest.approx(
            (sdk_point.count, sdk_point.sum, sdk_point.min, sdk_point.max)
        )
    assert histogram().collect() is None  # no series, no metric


def test_exemplars_are_the_last_sample_per_bucket_in_a_sampled_span_until_collected():
    ours = histogram()
    sampled = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    unsampled = TracerProvider(sampler=ALWAYS_OFF, shutdown_on_exit=False).get_tracer("t")
    ours.record(0.05, TASK)  # no span: no exemplar
    with unsampled.start_as_current_span("run"):
        ours.record(0.05, TASK)
    with sampled.start_as_current_span("first"):
        ours.record(0.05, TASK)
    with sampled.start_as_current_span("last") as last:
        ours.record(0.06, TASK)

    [point] = points_by_outcome(ours.collect()).values()
    [exemplar] = point.exemplars
    context = last.get_span_context()
    assert (exemplar.value, exemplar.trace_id, exemplar.span_id) == (0.06, context.trace_id, context.span_id)
    [again] = points_by_outcome(ours.collect()).values()
    assert again.exemplars == [] and again.count == 4  # cumulative; exemplars since the last collection


def test_the_exporter_sends_the_histograms_with_the_sdks_metrics(otlp_receiver: OtlpReceiver):
    """One export holds an SDK counter and the in-process histogram (with its exemplar) under one resource."""
    resource = Resource.create({"service.name": "marketplace-worker", "service.instance.id": "test-1"})
    ours = histogram()
    exporter = OTLPMetricExporterWithHistograms(
        [ours], resource=resource, scope="marketplace", endpoint=f"{otlp_receiver.endpoint}/v1/metrics"
    )
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
    provider.get_meter("marketplace").create_counter("celery.tasks.published").add(3, TASK)
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    with tracer.start_as_current_span("run") as span:
        ours.record(0.05, TASK)
    provider.shutdown()  # collects and exports once

    [point] = wait_for(lambda: otlp_receiver.latest("celery.task.duration"), what="the histogram")
    assert (point.count, point.total) == (1, pytest.approx(0.05))
    assert point.exemplar_trace_ids == [format(span.get_span_context().trace_id, "032x")]
    [counter] = otlp_receiver.latest("celery.tasks.published")
    assert counter.value == 3 and counter.resource == point.resource == dict(resource.attributes)
