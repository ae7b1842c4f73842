"""Task metrics summed in this process: the streams of SDK instruments, for a fraction of their CPU per run.

Every task run adds to two counters and records two histograms, and every publish adds to a counter. The SDK's
synchronous instruments cost 5 us per counter add and 9-13 us per histogram record in-process (``python -m
bench.hooks``): each measurement is validated, its attributes copied and hashed, offered to the exemplar filter
and dispatched per view - and a worker child pays about twice that. These classes keep the same streams for
about a microsecond each:

- ``InProcessCounter``: a cumulative monotonic sum, read by the SDK at each collection through an observable
  counter (same name, unit and attributes).
- ``InProcessHistogram``: an explicit-bucket histogram (cumulative, the SDK's bucket rule: a value equal to a
  bound falls into that bound's bucket) whose exemplars follow the SDK's defaults - the last sample of each
  bucket recorded inside a sampled span, reset at each collection. The SDK has no asynchronous histogram, so
  ``OTLPMetricExporterWithHistograms`` adds these to each export of the SDK's own metrics.

Attribute sets must be few (task, queue, outcome): each is a series kept for the life of the process.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import Exemplar
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExportResult,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext

__all__ = ["AttributeSet", "InProcessCounter", "InProcessHistogram", "OTLPMetricExporterWithHistograms"]

AttributeKey = frozenset[tuple[str, str]]


class AttributeSet(dict[str, str]):
    """An attribute set built once and shared by every measurement of its series, its key computed once: making
    and hashing the frozenset of a plain dict's items on each add or record cost about a microsecond."""

    __slots__ = ("key",)

    def __init__(self, attributes: Mapping[str, str]) -> None:
        super().__init__(attributes)
        self.key: AttributeKey = frozenset(self.items())


def _key(attributes: Mapping[str, str]) -> AttributeKey:
    return attributes.key if type(attributes) is AttributeSet else frozenset(attributes.items())


class InProcessCounter:
    """A monotonic counter summed in this process, exported as an observable counter named ``name``."""

    def __init__(self, meter: Meter, name: str, *, unit: str, description: str) -> None:
        self._totals: dict[AttributeKey, int] = {}
        self._lock = threading.Lock()  # the task thread adds, the reader's thread collects
        meter.create_observable_counter(name, callbacks=[self._observe], unit=unit, description=description)

    def add(self, amount: int, attributes: Mapping[str, str]) -> None:
        key = _key(attributes)
        with self._lock:
            self._totals[key] = self._totals.get(key, 0) + amount

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            totals = list(self._totals.items())
        return [Observation(total, dict(key)) for key, total in totals]


@dataclass
class _Series:
    counts: list[int]
    start_time_unix_nano: int
    count: int = 0
    total: float = 0.0
    low: float = float("inf")
    high: float = float("-inf")
    #: bucket index -> (value, time, span id, trace id) of the bucket's last sample in a sampled span
    exemplars: dict[int, tuple[float, int, int, int]] = field(default_factory=dict)


class InProcessHistogram:
    """An explicit-bucket histogram aggregated in this process; ``OTLPMetricExporterWithHistograms`` exports it."""

    def __init__(self, name: str, *, unit: str, description: str, bounds: Sequence[float]) -> None:
        self.name, self.unit, self.description = name, unit, description
        self._bounds = tuple(bounds)
        self._series: dict[AttributeKey, _Series] = {}
        self._lock = threading.Lock()  # the task thread records, the reader's thread collects

    def record(self, value: float, attributes: Mapping[str, str], span_context: SpanContext | None = None) -> None:
        """Record ``value`` (non-negative) in the series of ``attributes``; inside a sampled span (the current one,
        unless ``span_context`` names another), the sample is its bucket's exemplar until the next collection."""
        key = _key(attributes)
        index = bisect_left(self._bounds, value)
        if span_context is None:
            span_context = trace.get_current_span().get_span_context()
        now = time.time_ns()
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series([0] * (len(self._bounds) + 1), now)
            series.counts[index] += 1
            series.count += 1
            series.total += value
            series.low = min(series.low, value)
            series.high = max(series.high, value)
            if span_context.trace_flags.sampled:
                series.exemplars[index] = (value, now, span_context.span_id, span_context.trace_id)

    def collect(self) -> Metric | None:
        """The cumulative state of every series, with the exemplars sampled since the last collection."""
        now = time.time_ns()
        with self._lock:
            points = [
                HistogramDataPoint(
                    attributes=dict(key),
                    start_time_unix_nano=series.start_time_unix_nano,
                    time_unix_nano=now,
                    count=series.count,
                    sum=series.total,
                    bucket_counts=list(series.counts),
                    explicit_bounds=self._bounds,
                    min=series.low,
                    max=series.high,
                    exemplars=[
                        Exemplar({}, value, at, span_id, trace_id)
                        for value, at, span_id, trace_id in series.exemplars.values()
                    ],
                )
                for key, series in self._series.items()
            ]
            for series in self._series.values():
                series.exemplars.clear()
        if not points:
            return None
        data = Histogram(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE)
        return Metric(name=self.name, description=self.description, unit=self.unit, data=data)


class OTLPMetricExporterWithHistograms(OTLPMetricExporter):
    """The OTLP/HTTP metric exporter (configured by the standard ``OTEL_EXPORTER_OTLP_*`` variables) that adds
    ``histograms`` to every export, under ``scope`` of ``resource`` (the meter provider's); ``carry``, a pool
    child's (``pool_slots.PoolSlot.continued``), continues its slot's sums and histograms in each export."""

    def __init__(
        self,
        histograms: Sequence[InProcessHistogram],
        *,
        resource: Resource,
        scope: str,
        carry: Callable[[MetricsData, Resource], MetricsData] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self._histograms = tuple(histograms)
        self._resource = resource
        self._scope = InstrumentationScope(scope)
        self._carry = carry

    def export(
        self, metrics_data: MetricsData, timeout_millis: float | None = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        ours = [metric for metric in (h.collect() for h in self._histograms) if metric is not None]
        if ours:
            metrics_data = self._with(metrics_data, ours)
        if self._carry is not None:
            metrics_data = self._carry(metrics_data, self._resource)
        return super().export(metrics_data, timeout_millis, **kwargs)

    def _with(self, metrics_data: MetricsData, metrics: list[Metric]) -> MetricsData:
        """``metrics_data`` plus ``metrics`` in our scope (merged into it if the SDK's data has it)."""
        resources = list(metrics_data.resource_metrics) or [ResourceMetrics(self._resource, [], "")]
        first = resources[0]
        scopes = list(first.scope_metrics)
        for index, scope_metrics in enumerate(scopes):
            if scope_metrics.scope.name == self._scope.name:
                scopes[index] = ScopeMetrics(
                    scope_metrics.scope, [*scope_metrics.metrics, *metrics], scope_metrics.schema_url
                )
                break
        else:
            scopes.append(ScopeMetrics(self._scope, metrics, ""))
        resources[0] = ResourceMetrics(first.resource, scopes, first.schema_url)
        return MetricsData(resources)
