"""``HandOffSpanProcessor``: the SDK's batch span processor, whose export thread is handed the GIL when a
batch is full instead of fighting the task thread for it.

The SDK's ``BatchSpanProcessor`` wakes its export thread when ``max_export_batch_size`` spans are queued; that
thread then needs the GIL to encode and send them. Under CPython 3.11's GIL a busy task thread that does
short system calls (the summary log line's write, every Redis or SQL round trip) releases the GIL and takes it
back before the woken thread gets to run, and each such release signals it again, which restarts its 5 ms
wait for a forced switch: the export thread starves. Measured in a pool child running no-op tasks back to back
(``python -m bench.child_path``, 2-vCPU VM, 2026-11-29): about one futile wake-up of the export thread per
task (~20,000 voluntary context switches for 21,000 spans), each costing the task thread ~12 us in its write,
and the queue filling up to ``max_queue_size`` before the export ran - spans were dropped.

So the span that fills a batch waits, with the GIL released, until the export thread has exported it or
``hand_off_timeout_seconds`` has passed: one task in ``max_export_batch_size`` waits the length of one
export (5-20 ms for 2048 spans to a local collector), the others no longer pay for the starvation, and no span
is dropped while the collector keeps up. Everything else - queue, schedule, fork handling, flush and shutdown -
is the SDK's.

Batches are 2048 spans in a queue of 8192, not the SDK's 512 in 2048, unless ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``
or ``OTEL_BSP_MAX_QUEUE_SIZE`` is set (then the SDK's rules apply): an export request costs its thread about 4 ms
of CPU whatever its size, 8 us a span in batches of 512, 2 us in batches of 2048 (2-vCPU VM, 2026-12-02), CPU
that the publisher or task thread beside it loses as well.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

from opentelemetry.sdk.environment_variables import OTEL_BSP_MAX_EXPORT_BATCH_SIZE, OTEL_BSP_MAX_QUEUE_SIZE
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

__all__ = ["HandOffSpanProcessor"]

#: Spans per export request and spans queued at most, unless the environment sets either (module docstring).
MAX_EXPORT_BATCH_SIZE = 2048
MAX_QUEUE_SIZE = 8192


class HandOffSpanProcessor(BatchSpanProcessor):
    """A ``BatchSpanProcessor`` whose ``on_end`` waits for the export it triggers (see the module docstring)."""

    def __init__(self, exporter: SpanExporter, *, hand_off_timeout_seconds: float) -> None:
        self._hand_off_timeout_seconds = hand_off_timeout_seconds
        self._exported = threading.Condition()
        self._exports = 0
        configured = os.environ.get(OTEL_BSP_MAX_EXPORT_BATCH_SIZE) or os.environ.get(OTEL_BSP_MAX_QUEUE_SIZE)
        super().__init__(
            _Counting(exporter, self._count_export),
            max_queue_size=None if configured else MAX_QUEUE_SIZE,
            max_export_batch_size=None if configured else MAX_EXPORT_BATCH_SIZE,
        )

    def on_end(self, span: ReadableSpan) -> None:
        # The SDK sets this event when a span fills a batch; it stays set until that export is done. The
        # BatchProcessor is not public API: tests/test_span_processor.py fails if an upgrade moves it.
        awaken = self._batch_processor._worker_awaken
        if awaken.is_set():  # an export is already under way: this span joins the queue
            super().on_end(span)
            return
        exports = self._exports
        super().on_end(span)
        if awaken.is_set():  # this span woke the export thread: let it run
            with self._exported:
                self._exported.wait_for(lambda: self._exports != exports, self._hand_off_timeout_seconds)

    def _count_export(self) -> None:
        with self._exported:
            self._exports += 1
            self._exported.notify_all()


class _Counting(SpanExporter):
    """``exporter``, calling ``exported`` after each export (whatever its result)."""

    def __init__(self, exporter: SpanExporter, exported: Callable[[], None]) -> None:
        self._exporter = exporter
        self._exported = exported

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            return self._exporter.export(spans)
        finally:
            self._exported()

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)
