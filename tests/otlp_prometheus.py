"""The production metrics path, shrunk to fit a test: an OTLP/HTTP receiver that serves what it received as a
Prometheus scrape endpoint, the way the OpenTelemetry Collector's ``prometheus`` exporter does.

Production: SDK --OTLP--> Collector (``prometheus`` exporter, ``dashboards/otel-collector.yaml``) <-- Prometheus.
Here:       SDK --OTLP--> this bridge                                                            <-- Prometheus.

The worker, its exporters and the protobuf bytes are the real ones; only the Collector is replaced, so the
names Prometheus sees must be the ones the Collector would make. That translation is a port of the
Collector's own (``pkg/translator/prometheus``, now ``github.com/prometheus/otlptranslator``: ``normalizeName``
and ``buildUnitSuffixes`` of metric_namer.go / unit_namer.go), which implements the OpenTelemetry specification
"Prometheus and OpenMetrics Compatibility" (OTLP metric points to Prometheus). ``translate_name`` carries the
upstream examples as tests. As the Collector's exporter does by default: counters (monotonic cumulative sums)
get ``_total``, histograms ``_bucket``/``_sum``/``_count``, gauges and non-monotonic sums are gauges, the
resource becomes ``job`` (``service.namespace/service.name``) and ``instance`` (``service.instance.id``), and
histogram exemplars carry ``trace_id``/``span_id`` (OpenMetrics exposition). What it leaves out, because no
dashboard uses it: ``target_info``, ``otel_scope_info``, and expiry of series that stop being exported.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric
from prometheus_client.core import (
    CounterMetricFamily,
    Exemplar,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.core import (
    Metric as PrometheusMetric,
)
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST, generate_latest

from tests.otlp_receiver import OtlpReceiver, _attributes

# Upstream's unitMap and perUnitMap (otlptranslator/metric_namer.go).
_UNITS = {
    "d": "days", "h": "hours", "min": "minutes", "s": "seconds", "ms": "milliseconds", "us": "microseconds",
    "ns": "nanoseconds", "By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes", "GiBy": "gibibytes",
    "TiBy": "tibibytes", "KBy": "kilobytes", "MBy": "megabytes", "GBy": "gigabytes", "TBy": "terabytes",
    "m": "meters", "V": "volts", "A": "amperes", "J": "joules", "W": "watts", "g": "grams", "Cel": "celsius",
    "Hz": "hertz", "1": "", "%": "percent",
}  # fmt: skip
_PER_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}
_INVALID = re.compile(r"[^a-zA-Z0-9:]+")


def _clean_unit(unit: str) -> str:
    return _INVALID.sub("_", unit).lstrip("_")


def translate_name(name: str, unit: str, kind: str) -> str:
    """The Prometheus name the Collector's exporter gives an OTLP metric (``kind``: counter, gauge, histogram)."""
    tokens = [token for token in _INVALID.split(name) if token]
    main, _, per = unit.partition("/")
    main, per = main.strip(), per.strip()
    main_suffix = _clean_unit(_UNITS.get(main, main)) if main and not set(main) & set("{}") else ""
    per_suffix = f"per_{_PER_UNITS.get(per, per)}" if per and not set(per) & set("{}") else ""
    per_suffix = "" if per_suffix == "per_" else _clean_unit(per_suffix).rstrip("_")
    if per_suffix in tokens:
        per_suffix = ""
    if main_suffix and main_suffix not in tokens:
        tokens.append(main_suffix.rstrip("_") if per_suffix else main_suffix)
    if per_suffix:
        tokens.append(per_suffix)
    if kind == "counter":
        tokens = [t for t in tokens if t != "total"] + ["total"]
    if unit == "1" and kind == "gauge":
        tokens = [t for t in tokens if t != "ratio"] + ["ratio"]
    joined = "_".join(tokens)
    return f"_{joined}" if joined[:1].isdigit() else joined


def _label_name(key: str) -> str:
    label = re.sub(r"[^a-zA-Z0-9_]", "_", key)
    return f"key_{label}" if label[:1].isdigit() else label


@dataclass
class _Series:
    kind: str  # counter | gauge | histogram
    labels: dict[str, str]
    value: float = 0.0
    buckets: list[tuple[str, float, Exemplar | None]] | None = None
    total: float = 0.0


class PrometheusBridge(OtlpReceiver):
    """An ``OtlpReceiver`` (so tests may still assert on decoded points and spans) that also serves
    ``GET /metrics``: the latest value of every series it received, OpenMetrics text with exemplars."""

    def __init__(self) -> None:
        super().__init__()
        self._series: dict[tuple[str, tuple[tuple[str, str], ...]], _Series] = {}
        self._series_lock = threading.Lock()
        self.names: set[str] = set()

    @property
    def metrics_url(self) -> str:
        return f"{self.endpoint}/metrics"

    def _get(self, path: str) -> tuple[int, str, bytes]:
        if path.split("?")[0] != "/metrics":
            return super()._get(path)
        return 200, CONTENT_TYPE_LATEST, generate_latest(self)

    def _decoded_metrics(self, request: ExportMetricsServiceRequest) -> None:
        super()._decoded_metrics(request)
        with self._series_lock:
            for resource_metrics in request.resource_metrics:
                resource = _attributes(resource_metrics.resource.attributes)
                name = str(resource.get("service.name", ""))
                namespace = resource.get("service.namespace")
                target = {
                    "job": f"{namespace}/{name}" if namespace else name,
                    "instance": str(resource.get("service.instance.id", "")),
                }
                for scope in resource_metrics.scope_metrics:
                    for metric in scope.metrics:
                        self._update(metric, target)

    def _update(self, metric: Metric, target: dict[str, str]) -> None:
        data_kind = metric.WhichOneof("data")
        if data_kind == "sum":
            cumulative = metric.sum.aggregation_temporality == AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
            kind = "counter" if metric.sum.is_monotonic and cumulative else "gauge"
        elif data_kind in ("gauge", "histogram"):
            kind = data_kind
        else:
            raise AssertionError(f"{metric.name}: {data_kind} is not a kind the project records")
        name = translate_name(metric.name, metric.unit, kind)
        self.names.add(name)
        for point in getattr(metric, data_kind).data_points:
            labels = {_label_name(k): str(v) for k, v in _attributes(point.attributes).items()} | target
            series = _Series(kind, labels)
            if kind == "histogram":
                series.buckets, series.total = _buckets(point), point.sum
            else:
                series.value = point.as_double if point.WhichOneof("value") == "as_double" else point.as_int
            self._series[(name, tuple(sorted(labels.items())))] = series

    def collect(self) -> Iterator[PrometheusMetric]:
        """prometheus_client's collector protocol: one family per name, one sample set per series."""
        with self._series_lock:
            by_name: dict[str, list[_Series]] = {}
            for (name, _), series in self._series.items():
                by_name.setdefault(name, []).append(series)
        for name, members in sorted(by_name.items()):
            label_names = sorted({k for s in members for k in s.labels})
            family: Any
            if members[0].kind == "counter":
                family = CounterMetricFamily(name.removesuffix("_total"), name, labels=label_names)
            elif members[0].kind == "gauge":
                family = GaugeMetricFamily(name, name, labels=label_names)
            else:
                family = HistogramMetricFamily(name, name, labels=label_names)
            for series in members:
                values = [series.labels.get(k, "") for k in label_names]
                if series.buckets is not None:
                    family.add_metric(values, series.buckets, series.total)
                else:
                    family.add_metric(values, series.value)
            yield family


def _buckets(point: Any) -> list[tuple[str, float, Exemplar | None]]:
    """Cumulative ``le`` buckets of an OTLP explicit-bucket histogram point, each with the last exemplar whose
    value falls in it (the Collector's exporter places exemplars the same way)."""
    bounds = [*point.explicit_bounds, float("inf")]
    exemplars: dict[int, Exemplar] = {}
    for exemplar in point.exemplars:
        if exemplar.trace_id:
            value = exemplar.as_double if exemplar.WhichOneof("value") == "as_double" else exemplar.as_int
            index = next(i for i, bound in enumerate(bounds) if value <= bound)
            exemplars[index] = Exemplar(
                {"trace_id": exemplar.trace_id.hex(), "span_id": exemplar.span_id.hex()},
                value,
                exemplar.time_unix_nano / 1e9,
            )
    cumulative, buckets = 0.0, []
    for index, (bound, count) in enumerate(zip(bounds, point.bucket_counts, strict=True)):
        cumulative += count
        le = "+Inf" if bound == float("inf") else repr(float(bound))
        buckets.append((le, cumulative, exemplars.get(index)))
    return buckets
