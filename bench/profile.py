"""``python -m bench.profile``: where a worker child's (or main process's) CPU goes, bare vs ObservableTask.

Pre-fills the queue, starts a bench worker, samples one pool child with ``py-spy record --gil --format raw``
(GIL-holding samples: a CPU proxy; the binary from ``$PY_SPY``, e.g. a throwaway venv: ``python -m venv
/tmp/prof && /tmp/prof/bin/pip install py-spy``) and prints the share of samples under telemetry, logging and
Sentry frames. The collapsed stacks stay in ``bench/results/logs/`` for a closer look.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from collections import Counter
from pathlib import Path

from bench.harness import LOGS, Sink, Worker, setup_django, wait_until
from bench.throughput import broker, done_count, loglevel, publish, variant_env

#: Frames whose inclusive share is reported: substrings of py-spy's ``Class.function (file:line)`` frame text.
#: py-spy shortens file names (``opentelemetry/sdk/trace/__init__.py`` shows as ``trace/__init__.py``), so
#: most patterns are a qualified function name and the opening parenthesis.
FRAMES = (
    "_worker_child (observability/wiring.py",
    "BatchProcessor._export (",
    "TaskSpanExporter.encode_bytes (",
    "encode_spans (",
    "_OTLPHTTPClient.export (",
    "ObservableTask.__call__ (observability/task.py",
    "task_started (observability/telemetry/runs.py",
    "task_finished (observability/telemetry/runs.py",
    "BoundLogger.info (structlog",
    "_DirectRoute.write (",
    "StreamHandler.emit (",
    "render_line (",
    "TaskSpans.start (",
    "Tracer.start_span (",
    "Span.end (",
    "Counter.add (",
    "Histogram.record (",
    "attach (",
    "extract (",
    "sentry_sdk",
    "_one_call (bench/tasks.py",
    "trace_task (celery/app/trace.py",
    "on_message",
)

#: Each sample counted once, under the first of these found from the innermost frame outwards.
CATEGORIES = (
    ("export thread: OTLP encoding of task spans", "TaskSpanExporter.encode_bytes ("),
    ("export thread: OTLP encoding of other spans", "encode_spans ("),
    ("export thread: HTTP, batching", "BatchProcessor.worker ("),
    ("summary line", "BoundLogger.info (structlog"),
    ("metrics: counter adds", "Counter.add ("),
    ("metrics: histogram records", "Histogram.record ("),
    ("span start", "TaskSpans.start ("),
    ("span end", "Span.end ("),
    ("log context bind/clear", "_task_context (observability/logs"),
    ("task_started, own lines", "task_started (observability/telemetry/runs"),
    ("task_finished, own lines", "task_finished (observability/telemetry/runs"),
    ("the task body", "_one_call (bench/tasks.py"),
    ("ObservableTask.__call__, own lines", "ObservableTask"),
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", choices=["bare", "observable"], default="observable")
    parser.add_argument("--tasks", type=int, default=30000, help="Messages to pre-fill.")
    parser.add_argument("--seconds", type=int, default=10, help="Sampling duration.")
    parser.add_argument("--process", choices=["child", "main"], default="child", help="Which process to sample.")
    parser.add_argument(
        "--max-tasks-per-child", type=int, default=100_000_000,
        help="Pool child recycling (the project default is 1000; high so one child lives through the sampling).",
    )  # fmt: skip
    args = parser.parse_args(argv)
    py_spy = os.environ.get("PY_SPY", "/tmp/benchprof/bin/py-spy")
    setup_django()
    sink = Sink()
    client = broker()
    client.flushdb()
    env = variant_env(args.variant, sink)
    publish(args.variant, env, args.tasks)
    worker = Worker(
        env, f"profile-{args.variant}", loglevel=loglevel(args.variant),
        extra=[f"--max-tasks-per-child={args.max_tasks_per_child}"],
    )  # fmt: skip
    out = LOGS / f"profile-{args.variant}-{args.process}.txt"
    try:
        wait_until(lambda: done_count(client) >= 500, timeout=120, what="the worker to start")
        pid = worker.children()[0] if args.process == "child" else worker.process.pid
        subprocess.run(
            [py_spy, "record", "--pid", str(pid), "--duration", str(args.seconds), "--rate", "500",
             "--format", "raw", "--output", str(out), "--nonblocking", "--gil"],
            check=True, capture_output=True,
        )  # fmt: skip
    finally:
        worker.stop()
        sink.stop()
    report(out)


def report(path: Path) -> None:
    """Print the inclusive share of each of ``FRAMES`` among the samples of a py-spy raw (collapsed) file, then
    each sample once under its innermost ``CATEGORIES`` match (the rest: Celery, billiard, other)."""
    total = 0
    hits: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        total += count
        for frame in FRAMES:
            if frame in stack:
                hits[frame] += count
        categories[_category(stack.split(";"))] += count
    print(f"{path}: {total} samples")
    for frame in FRAMES:
        print(f"  {hits[frame] / max(total, 1):6.1%}  {frame}")
    print("innermost category:")
    for name in [name for name, _ in CATEGORIES] + [_OTHER]:
        print(f"  {categories[name] / max(total, 1):6.1%}  {name}")


_OTHER = "Celery trace_task, signals, billiard, other"


def _category(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in CATEGORIES:
            if pattern in frame:
                return name
    return _OTHER


if __name__ == "__main__":
    main()
