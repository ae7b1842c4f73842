"""``python -m bench.child_path``: a pool child's CPU per task, in-process - what issue 6's goal 1 names.

A worker's child runs a task as ``celery.app.trace.fast_trace_task`` on the request dict and body the main
process hands it. This benchmark does exactly that without a broker or a pool, so neither the main process
nor the pool's regime (which child gets the next message) moves the figure:

1. the loader's ``init_worker`` (task modules, Django's system checks) and the project's ``setup_logging`` and
   ``worker_init`` handlers run (Sentry, telemetry, the pre-fork imports and ``gc.freeze``), then the process
   forks, and the forked copy runs ``worker_process_init`` - as a worker and billiard do;
2. the message is built as a producer builds it (``app.amqp.as_task_v2``, the project's publish hook for the
   instrumented variant, kombu's JSON encoding) and turned into the request dict by the task's own ``Request``
   class (``ObservableRequest`` for ``ObservableTask``), as the main process does;
3. the forked copy runs the task ``--tasks`` times through ``fast_trace_task`` and then flushes its telemetry
   (so the export thread's work is counted), measuring CPU time of the whole process (every thread).

The tasks do nothing (``bench.tasks.bare_pass`` / ``observable_pass``). Variants, each in its own process with
the environment ``bench.run`` gives its workers: ``bare`` (a plain ``celery.Task``, integrations off, logs at
WARNING), ``reliability`` (``ObservableTask``, integrations off, logs at WARNING: the base class alone) and
``observable`` (``ObservableTask`` with everything on: OTLP traces and metrics and Sentry to a local ``Sink``,
the summary line per task as JSON to a file) and ``contrib``, the reference the issue's goal is set against:
a plain ``celery.Task`` under ``opentelemetry-instrumentation-celery`` (batch span processor, no-op exporter)
plus a counter and a histogram per task. Alternated, medians (min-max) of ``--repeats``; what a variant adds
is taken pair by pair against ``bare`` of the same round.

``--options`` adds three variants: ``observable`` with one of the settings that would bring its cost near the
quarter of contrib's the issue asks for, to price a product decision (docs/performance.md): ``no-line`` (logs
at WARNING: no summary line per successful run), ``sampled`` (``parentbased_traceidratio`` at 1%: 99 runs in
100 get a non-recording span) and ``lean`` (both).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

from bench.harness import LOGS, ROOT, Sink, Summary
from bench.throughput import variant_env

HOSTNAME = "bench@localhost"
VARIANTS = ("bare", "reliability", "observable", "contrib")
_SAMPLED = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}
#: ``--options``: ``observable``'s environment with these settings on top.
OPTIONS: dict[str, dict[str, str]] = {
    "no-line": {"LOG_LEVEL": "WARNING"},
    "sampled": _SAMPLED,
    "lean": {"LOG_LEVEL": "WARNING", **_SAMPLED},
}
TASKS = {
    "bare": "bench.bare_pass",
    "reliability": "bench.observable_pass",
    "observable": "bench.observable_pass",
    "contrib": "bench.bare_pass",
    **dict.fromkeys(OPTIONS, "bench.observable_pass"),
}


class _WorkerStandIn:
    """The ``worker_init`` sender: the Django fix-up reads the worker's app and pool class from it."""

    pool_cls = "celery.concurrency.prefork:TaskPool"

    def __init__(self, app: Any) -> None:
        self.app = app


def _message(app: Any, task: Any, instrumented: bool) -> tuple[dict[str, Any], Any, str, str]:
    """The request dict, body and encoding the main process would hand a child for one ``task.delay()``."""
    from celery.utils.imports import symbol_by_name
    from kombu.message import Message
    from kombu.serialization import dumps

    from observability import telemetry

    task_id = "00000000-0000-4000-8000-000000000000"
    headers, properties, body, _ = app.amqp.as_task_v2(
        task_id, task.name, args=(), kwargs={}, ignore_result=task.ignore_result
    )
    if instrumented:
        telemetry.on_publish(headers, task.name, "celery")  # the project's before_task_publish hook
    content_type, content_encoding, payload = dumps(body, serializer="json")
    message = Message(
        body=payload,
        delivery_tag="1",
        content_type=content_type,
        content_encoding=content_encoding,
        delivery_info={"exchange": "", "routing_key": "celery", "redelivered": False},
        properties=properties,
        headers=headers,
        channel=None,
    )
    request = symbol_by_name(task.Request)(message, app=app, task=task, hostname=HOSTNAME)
    return request.request_dict, payload, content_type, content_encoding


def _run_child(variant: str, tasks: int) -> dict[str, float]:
    """In the variant's environment: set up as a worker does, fork, run the tasks in the fork; its figures."""
    import django

    django.setup()
    from celery import signals
    from celery.app import trace
    from celery.concurrency.prefork import process_initializer

    import bench.tasks  # noqa: F401 - registers the pass tasks
    from marketplace.celery import app
    from observability import telemetry

    # What `celery worker --loglevel=LEVEL` does: the project's setup_logging handler, JSON lines to stderr.
    app.log.setup(loglevel=logging.getLevelNamesMapping()[os.environ["LOG_LEVEL"]])
    trace.setup_worker_optimizations(app, HOSTNAME)
    task = app.tasks[TASKS[variant]]
    instrumented = variant == "observable" or variant in OPTIONS
    request_dict, body, content_type, content_encoding = _message(app, task, instrumented=instrumented)
    # What WorkController.__init__ does first: the task modules, and the Django fix-up's system checks, once in
    # the main process; a forked child then skips them (without this, each child ran the checks, 100-150 ms).
    app.loader.init_worker()
    signals.worker_init.send(sender=_WorkerStandIn(app))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        # What billiard runs in a new pool child: tracers, worker_process_init (bench.tasks instruments the
        # contrib variant there, as in its end-to-end workers).
        process_initializer(app, HOSTNAME)

        def run(count: int) -> None:
            for _ in range(count):
                trace.fast_trace_task(task.name, request_dict["id"], dict(request_dict), body, content_type,
                                      content_encoding)  # fmt: skip

        run(min(1000, tasks))  # warm-up: first-call caches, the span template, the log handler's file
        switches = _background_switches()
        cpu, wall = time.process_time(), time.perf_counter()
        run(tasks)
        switches = _background_switches() - switches  # before the flush: the loop's, not the flush's
        for provider in telemetry.current().providers:
            provider.force_flush()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        per_task = {"cpu_us": cpu / tasks * 1e6, "wall_us": wall / tasks * 1e6, "background_switches": switches / tasks}
        os.write(write, json.dumps(per_task).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        figures: dict[str, float] = json.loads(pipe.read())
    os.waitpid(pid, 0)
    return figures


def _background_switches() -> int:
    """Voluntary context switches of this process's threads other than the calling one, so far. A background
    thread (the span export thread) that waits for the GIL the task thread keeps taking back wakes up about once
    per task instead of once per batch (docs/performance.md, 16:05 block)."""
    total = 0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) == threading.get_native_id():
            continue
        with contextlib.suppress(FileNotFoundError), open(f"/proc/self/task/{tid}/status") as status:
            total += next(int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt_switches"))
    return total


def _environment(variant: str, sink: Sink) -> dict[str, str]:
    # The end-to-end workers' environments; ``reliability`` is ObservableTask in the bare one.
    if variant in OPTIONS:
        return {**variant_env("observable", sink), **OPTIONS[variant]}
    return variant_env("bare" if variant == "reliability" else variant, sink)


def measure(tasks: int, repeats: int, sink: Sink, variants: tuple[str, ...] = VARIANTS) -> dict[str, Any]:
    """``repeats`` rounds of every variant, the order reversed each round; CPU and wall us per task."""
    LOGS.mkdir(parents=True, exist_ok=True)
    samples: dict[str, list[dict[str, float]]] = {variant: [] for variant in variants}
    for round_index in range(repeats):
        order = variants if round_index % 2 == 0 else tuple(reversed(variants))
        for variant in order:
            command = [sys.executable, "-m", "bench.child_path", "--child", variant, "--tasks", str(tasks)]
            with (LOGS / f"child-path-{variant}.log").open("w") as log:
                done = subprocess.run(
                    command, cwd=ROOT, env=_environment(variant, sink), stdout=subprocess.PIPE, stderr=log,
                    text=True, check=False,
                )  # fmt: skip
            if done.returncode:
                raise RuntimeError(f"child path {variant} failed; see {log.name}")
            samples[variant].append(json.loads(done.stdout))
            print(f"  {variant} #{round_index + 1}: {samples[variant][-1]['cpu_us']:.1f} us CPU/task", flush=True)
    result: dict[str, Any] = {"tasks": tasks, "repeats": repeats}
    for variant, runs in samples.items():
        keys = ("cpu_us", "wall_us", "background_switches")
        result[variant] = {key: Summary.of([run[key] for run in runs]).to_json() for key in keys}
    for variant in variants:
        if variant != "bare" and "bare" in samples:
            # Pair by pair (same round), as the other A/B figures of the benchmark.
            pairs = zip(samples["bare"], samples[variant], strict=True)
            added = [run["cpu_us"] - bare["cpu_us"] for bare, run in pairs]
            result[variant]["added_cpu_us"] = Summary.of(added).to_json()
    if {"bare", "contrib"} <= set(samples):
        for variant in ("observable", *OPTIONS):
            if variant in samples:
                result[f"{variant}_share_of_contrib"] = _shares_of_contrib(samples, variant)
    return result


def _shares_of_contrib(samples: dict[str, list[dict[str, float]]], variant: str) -> dict[str, Any]:
    """What ``variant`` adds over ``bare`` divided by what ``contrib`` adds, round by round."""
    rounds = zip(samples["bare"], samples[variant], samples["contrib"], strict=True)
    shares = [(run["cpu_us"] - bare["cpu_us"]) / (contrib["cpu_us"] - bare["cpu_us"]) for bare, run, contrib in rounds]
    return Summary.of(shares).to_json()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10_000, help="Tasks timed per run (default 10,000).")
    parser.add_argument("--repeats", type=int, default=3, help="Rounds of every variant (default 3).")
    parser.add_argument(
        "--options", action="store_true", help="Also measure observable with each of: " + ", ".join(OPTIONS) + "."
    )
    parser.add_argument("--child", choices=(*VARIANTS, *OPTIONS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_run_child(args.child, args.tasks)))
        return
    variants = (*VARIANTS, *OPTIONS) if args.options else VARIANTS
    sink = Sink()
    try:
        result = measure(args.tasks, args.repeats, sink, variants)
    finally:
        sink.stop()
    for variant in variants:
        cpu, added = result[variant]["cpu_us"], result[variant].get("added_cpu_us")
        line = f"{variant:12} {cpu['median']:7.1f} us CPU per task ({cpu['min']:.1f}-{cpu['max']:.1f})"
        if added:
            line += f", adds {added['median']:.1f} ({added['min']:.1f}-{added['max']:.1f})"
        line += f"; background threads woke {result[variant]['background_switches']['median']:.3f} times per task"
        print(line)
    for variant in ("observable", *OPTIONS):
        if share := result.get(f"{variant}_share_of_contrib"):
            print(f"{variant} adds {share['median']:.2f}x what contrib adds ({share['min']:.2f}-{share['max']:.2f})")


if __name__ == "__main__":
    main()
