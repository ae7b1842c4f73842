"""A local OTLP/HTTP receiver for tests: accepts ``/v1/traces`` and ``/v1/metrics`` (protobuf, optionally
gzip) from the real OpenTelemetry exporters and keeps what it decoded, for assertions."""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.net import LocalServer


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def _attributes(attributes: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in attributes}


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    links: list[tuple[str, str]]
    status_code: int
    #: (name, attributes) of each span event, e.g. ``exception``
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


@dataclass
class Point:
    """One data point of one export: counters and gauges carry ``value``, histograms ``count``/``sum``.
    ``export`` numbers the export requests in the order received: the points of one collection share it."""

    metric: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    export: int = 0
    value: float | None = None
    count: int | None = None
    total: float | None = None
    exemplar_trace_ids: list[str] = field(default_factory=list)


class OtlpReceiver(LocalServer):
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.points: list[Point] = []
        self._exports = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path.endswith("/v1/traces"):
                    receiver._traces(body)
                elif self.path.endswith("/v1/metrics"):
                    receiver._metrics(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                status, content_type, payload = receiver._get(self.path)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                return None

        super().__init__(Handler, name="otlp-receiver")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def clear(self) -> None:
        with self._lock:
            self.spans.clear()
            self.points.clear()

    def _get(self, path: str) -> tuple[int, str, bytes]:
        """Answer a GET: (status, content type, body). The receiver itself serves none; subclasses may."""
        return 404, "text/plain", b"not found"

    def _traces(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        spans = [
            Span(
                name=span.name,
                trace_id=span.trace_id.hex(),
                span_id=span.span_id.hex(),
                parent_span_id=span.parent_span_id.hex(),
                kind=span.kind,
                attributes=_attributes(span.attributes),
                resource=_attributes(resource_spans.resource.attributes),
                links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                status_code=span.status.code,
                events=[(event.name, _attributes(event.attributes)) for event in span.events],
            )
            for resource_spans in request.resource_spans
            for scope in resource_spans.scope_spans
            for span in scope.spans
        ]
        with self._lock:
            self.spans.extend(spans)

    def _metrics(self, body: bytes) -> None:
        self._decoded_metrics(ExportMetricsServiceRequest.FromString(body))

    def _decoded_metrics(self, request: ExportMetricsServiceRequest) -> None:
        with self._lock:
            self._exports += 1
            export = self._exports
        points = []
        for resource_metrics in request.resource_metrics:
            resource = _attributes(resource_metrics.resource.attributes)
            for scope in resource_metrics.scope_metrics:
                for metric in scope.metrics:
                    kind = metric.WhichOneof("data")
                    for dp in getattr(metric, kind).data_points:
                        point = Point(metric.name, _attributes(dp.attributes), resource, export)
                        if kind == "histogram":
                            point.count, point.total = dp.count, dp.sum
                            point.exemplar_trace_ids = [e.trace_id.hex() for e in dp.exemplars if e.trace_id]
                        else:
                            point.value = dp.as_double if dp.WhichOneof("value") == "as_double" else dp.as_int
                        points.append(point)
        with self._lock:
            self.points.extend(points)

    # --- queries -------------------------------------------------------------------------------------------
    def spans_named(self, name: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.name == name]

    def latest(self, metric: str) -> list[Point]:
        """The last exported point of each series (process x attributes) of a cumulative metric."""
        with self._lock:
            series: dict[tuple[str, tuple[tuple[str, Any], ...]], Point] = {}
            for point in self.points:
                if point.metric == metric:
                    key = (str(point.resource.get("service.instance.id")), tuple(sorted(point.attributes.items())))
                    series[key] = point
            return list(series.values())

    def total(self, metric: str, **attributes: Any) -> float:
        """Sum over processes of the latest value (or histogram count) of the series matching ``attributes``."""
        return sum(
            (p.count if p.count is not None else p.value or 0)
            for p in self.latest(metric)
            if all(p.attributes.get(k) == v for k, v in attributes.items())
        )
