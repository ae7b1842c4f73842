"""``python -m bench.span_drops``: does the installed SDK's ``BatchSpanProcessor`` still drop the spans of a busy
thread - the reason ``HandOffSpanProcessor`` (``observability/telemetry/span_processor.py``) exists?

A thread ends ``--batches`` batches of spans back to back, with a short system call after each (a task's
summary line's write: it releases the GIL and takes it back at once), through each processor in turn, with a
queue of four batches and exports started by size only. Printed per run: spans ended, spans exported. The
starvation is a matter of scheduling (it showed in about 6 runs of 10 on an idle 2-vCPU VM, in none on a loaded
one), so this is a measurement, not a test: ``tests/observability/telemetry/test_span_processor.py`` pins what
is deterministic (the hand-off loses no span, waits for its export, is bounded by its timeout).

When the SDK's processor no longer drops spans on an idle machine, delete ``HandOffSpanProcessor`` and use
``BatchSpanProcessor`` in ``observability/telemetry/providers.py``.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable

from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from observability.telemetry.span_processor import HandOffSpanProcessor

__all__ = ["BATCH", "busy_thread_ends_spans", "main"]

#: Spans per export batch; the queue holds four batches (``configure_batches``).
BATCH = 64


def configure_batches() -> None:
    """Exports start when a batch is full, never on the (one minute) schedule; the queue holds four batches."""
    os.environ["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"] = str(BATCH)
    os.environ["OTEL_BSP_MAX_QUEUE_SIZE"] = str(4 * BATCH)
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "60000"


def busy_thread_ends_spans(processor: Callable[[SpanExporter], SpanProcessor], batches: int) -> tuple[int, int]:
    """(spans ended, spans exported) when this thread ends ``batches`` batches of spans back to back through a
    fresh ``processor``, with a short system call after each (the ``OTEL_BSP_*`` variables in force apply)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(processor(exporter))
    tracer = provider.get_tracer("bench")
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for index in range(batches * BATCH):
            tracer.start_span(f"span-{index}").end()
            os.write(devnull, b'{"event": "task.finished"}\n')
    finally:
        os.close(devnull)
        provider.shutdown()
    return batches * BATCH, len(exporter.get_finished_spans())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.span_drops", description=__doc__)
    parser.add_argument("--runs", type=int, default=10, help="Runs per processor (default 10).")
    parser.add_argument("--batches", type=int, default=100, help="Batches of spans per run (default 100).")
    args = parser.parse_args(argv)
    configure_batches()
    logging.disable(logging.WARNING)  # the SDK's "Queue full, dropping Span." per drop: counted below instead
    processors: dict[str, Callable[[SpanExporter], SpanProcessor]] = {
        "sdk BatchSpanProcessor": BatchSpanProcessor,
        "HandOffSpanProcessor": lambda exporter: HandOffSpanProcessor(exporter, hand_off_timeout_seconds=10),
    }
    for name, processor in processors.items():
        runs = [busy_thread_ends_spans(processor, args.batches) for _ in range(args.runs)]
        dropping = sum(1 for ended, exported in runs if exported < ended)
        dropped = sum(ended - exported for ended, exported in runs)
        print(f"{name}: {dropping} of {args.runs} runs dropped spans, {dropped} spans dropped in all")


if __name__ == "__main__":
    main()
