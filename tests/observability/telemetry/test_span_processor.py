"""The hand-off span processor (observability.telemetry.span_processor): the span that fills a batch waits, with the
GIL released, for that batch's export - bounded by a timeout - so a busy task thread cannot starve the export
thread into dropping spans. Real SDK tracer provider, real export thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bench.span_drops import BATCH, busy_thread_ends_spans
from observability.telemetry.span_processor import HandOffSpanProcessor


@pytest.fixture(autouse=True)
def _batches_by_size_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # Exports start when a batch is full, never on the (here: one minute) schedule.
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", str(BATCH))
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", str(4 * BATCH))
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(HandOffSpanProcessor(exporter, hand_off_timeout_seconds=10))
    yield provider
    provider.shutdown()


def end_spans(provider: TracerProvider, count: int) -> None:
    tracer = provider.get_tracer("tests")
    for index in range(count):
        tracer.start_span(f"span-{index}").end()


def test_the_span_that_fills_a_batch_returns_once_the_batch_is_exported(
    provider: TracerProvider, exporter: InMemorySpanExporter
):
    """Below a batch nothing is exported; the span that completes it returns after the export thread sent it."""
    end_spans(provider, BATCH - 1)
    assert exporter.get_finished_spans() == ()

    end_spans(provider, 1)

    assert len(exporter.get_finished_spans()) == BATCH


def test_a_busy_thread_making_system_calls_loses_no_span():
    """A thread that makes a system call after each span (what the SDK's own processor drops spans of on an idle
    machine: ``python -m bench.span_drops`` measures it) loses none through the hand-off: every span of 100
    batches is exported, although the queue holds only four batches."""
    ended, exported = busy_thread_ends_spans(
        lambda exporter: HandOffSpanProcessor(exporter, hand_off_timeout_seconds=10), batches=100
    )
    assert exported == ended


class _HeldExporter(InMemorySpanExporter):
    """Exports only once ``release`` is set: a collector that does not answer."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(30)
        return super().export(spans)


def test_a_slow_export_holds_the_span_that_triggered_it_no_longer_than_the_timeout():
    """The hand-off is bounded: with an export that hangs, the span that filled the batch returns after the
    timeout, and the batch is still exported once the exporter answers."""
    exporter = _HeldExporter()
    provider = TracerProvider()
    provider.add_span_processor(HandOffSpanProcessor(exporter, hand_off_timeout_seconds=0.2))
    end_spans(provider, BATCH - 1)

    started = time.monotonic()
    end_spans(provider, 1)
    waited = time.monotonic() - started

    assert 0.2 <= waited < 5
    assert exporter.get_finished_spans() == ()
    exporter.release.set()
    provider.shutdown()
    assert len(exporter.get_finished_spans()) == BATCH
