"""``python -m bench.hooks``: what each piece of a task run's and a publish's telemetry costs, in-process (timeit).

Complements ``bench.profile`` (where a real worker child's CPU goes) with reproducible per-piece figures: the
metric records, the spans (run and publish), the summary log line (JSON to a file), the log context, and the
OTLP encoding of a batch of task spans (the export thread's work). Telemetry is set up as in a worker child,
exporting to a local ``Sink``. Figures are CPU microseconds on this machine, in a warm process: a worker child
pays more (cache misses, the main process on the same cores), so compare them with each other, not with
``bench.run``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import timeit
import uuid
from collections.abc import Callable
from typing import Any

from bench.harness import Sink, setup_django

TASK = "bench.observable_noop"


def _request() -> Any:
    from celery.app.task import Context

    headers = {"x-published-at": time.time()}
    return Context(id=str(uuid.uuid4()), retries=0, delivery_info={"routing_key": "celery"}, eta=None, **headers)


def _per_call_us(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=3)) / number * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=5000, help="Calls per timing (best of 3).")
    args = parser.parse_args(argv)
    sink = Sink()
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.otlp_endpoint
    setup_django()
    import structlog
    from django.conf import settings
    from opentelemetry.sdk.trace import SpanProcessor

    from observability import telemetry
    from observability.logs import bind_task_context, clear_task_context, configure_logging
    from observability.telemetry.task_span_export import TaskSpanExporter
    from observability.telemetry.task_spans import TaskSpan, TaskSpans

    settings.OTEL_EXPORTER_OTLP_ENDPOINT = sink.otlp_endpoint
    log_file = tempfile.NamedTemporaryFile("w", suffix=".jsonl")  # noqa: SIM115 - closed at the end
    configure_logging(level="INFO", fmt="json", stream=log_file)  # type: ignore[arg-type]
    state = telemetry.setup("worker")
    spans: list[TaskSpan] = []

    class Collect(SpanProcessor):
        def on_end(self, span: Any) -> None:
            spans.append(span)

    provider = state.providers[0]
    task_spans = TaskSpans(provider, Collect())
    instruments, n = state.instruments, args.number
    attributes = {"task": TASK, "queue": "celery"}
    log = structlog.get_logger("observability.task")

    def run_hooks() -> None:
        telemetry.task_finished(telemetry.task_started(TASK, _request()), "succeeded")

    def span() -> None:
        run = task_spans.start(TASK, "celery", parent=None, message_id=str(uuid.uuid4()), retries=0)
        run.set_attribute("celery.outcome", "succeeded")
        run.end()

    def publish_hooks() -> None:
        publish = telemetry.publish_started(TASK)
        telemetry.on_publish({"id": "6f1c2d3e-0000-4000-8000-000000000001"}, TASK, "celery")
        telemetry.publish_finished(publish)

    def send_span() -> None:
        send = task_spans.start_send(TASK)
        task_spans.set_destination(send, TASK, "celery", str(uuid.uuid4()))
        send.end()

    def context() -> None:
        bind_task_context(task_name=TASK, task_id="id", retries=0)
        clear_task_context()

    def summary_line() -> None:
        log.info("task.finished", outcome="succeeded", duration_ms=0.1, queue_wait_ms=0.2, error_type=None)

    rows = [
        (
            "task_started + task_finished (wall: the export thread and the receiver run meanwhile)",
            _per_call_us(run_hooks, n),
        ),
        (
            "publish_started + on_publish + publish_finished (wall: the export thread and the receiver run meanwhile)",
            _per_call_us(publish_hooks, n),
        ),
        ("publish span start_send + set_destination + end", _per_call_us(send_span, n)),
        ("counter add", _per_call_us(lambda: instruments.started.add(1, attributes), n)),
        ("histogram record", _per_call_us(lambda: instruments.queue_wait.record(0.001, attributes), n)),
        ("task span start + end (observability.telemetry.task_spans)", _per_call_us(span, n)),
        ("summary line (JSON to a file)", _per_call_us(summary_line, n)),
        ("bind + clear log context", _per_call_us(context, n)),
    ]
    sends = [s for s in spans if s.template.kind == s.template.SpanKind.SPAN_KIND_PRODUCER][-512:]
    batch = [s for s in spans if s.template.kind != s.template.SpanKind.SPAN_KIND_PRODUCER][-512:]
    exporter = TaskSpanExporter(provider.resource, scope=telemetry.METER, endpoint=sink.otlp_endpoint)
    encode_us = _per_call_us(lambda: exporter.encode_bytes(batch), 20) / len(batch)
    rows.append((f"OTLP encoding per task span (batch of {len(batch)})", encode_us))
    encode_us = _per_call_us(lambda: exporter.encode_bytes(sends), 20) / len(sends)
    rows.append((f"OTLP encoding per publish span (batch of {len(sends)})", encode_us))
    for label, us in rows:
        print(f"{us:8.1f} us  {label}")
    telemetry.shutdown()
    log_file.close()
    sink.stop()


if __name__ == "__main__":
    main()
