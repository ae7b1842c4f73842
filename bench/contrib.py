"""The reference issue 6 sets its goals against: ``opentelemetry-instrumentation-celery`` with a batch span
processor and a no-op exporter, plus a counter and a histogram per task - on a plain ``celery.Task``, with the
project's own telemetry off.

``instrument()`` sets it up in the process that calls it: a producer (publish spans and header injection) or a
worker's pool child (run spans; ``bench.tasks`` calls it at ``worker_process_init`` when ``CONTRIB_ENV`` is set).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

__all__ = ["CONTRIB_ENV", "instrument"]

#: Set (to anything) in a bench worker's environment: its pool children run under the contrib instrumentation.
CONTRIB_ENV = "BENCH_CONTRIB_INSTRUMENTATION"


def instrument() -> None:
    """Instrument Celery in this process the way the reference figures were measured."""
    from celery import signals
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class NoOpExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(NoOpExporter()))
    CeleryInstrumentor().instrument(tracer_provider=tracer_provider)
    meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("bench")
    finished = meter.create_counter("celery.task.finished")
    duration = meter.create_histogram("celery.task.duration", unit="s")
    started: dict[str, float] = {}

    def on_prerun(task_id: str, **kwargs: Any) -> None:
        started[task_id] = time.perf_counter()

    def on_postrun(sender: Any, task_id: str, state: str | None = None, **kwargs: Any) -> None:
        attributes = {"task": sender.name, "state": state or ""}
        finished.add(1, attributes)
        duration.record(time.perf_counter() - started.pop(task_id, time.perf_counter()), attributes)

    signals.task_prerun.connect(on_prerun, weak=False)
    signals.task_postrun.connect(on_postrun, weak=False)
