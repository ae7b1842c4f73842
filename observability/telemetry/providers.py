"""This process's OpenTelemetry providers: built per process, correct under prefork, flushed within a bound.

- ``setup(role)`` builds the providers with a resource naming the role (web, worker, beat, cli) and a
  per-process ``service.instance.id`` - except a worker's pool child (``pool_child``), which exports as its pool
  slot and goes on from its predecessor's sums (``pool_slots``); export goes over OTLP, configured by the
  standard ``OTEL_*`` variables.
  Without ``OTEL_EXPORTER_OTLP_ENDPOINT`` nothing is installed and every hook is a no-op.
- Worker children call it after fork (``worker_process_init``) and ``shutdown()`` flushes before a child exits
  (``worker_process_shutdown``), so nothing is lost when ``max_tasks_per_child`` recycles it - unless the
  collector does not take it within ``TELEMETRY_SHUTDOWN_TIMEOUT_SECONDS``: an unreachable collector must not
  hold up the pool. The worker's main process uses a metric reader that stays silent in forked children (no
  duplicate series).
- Providers are kept here, not installed globally: a child can rebuild them after fork, which the global API
  forbids.
"""

from __future__ import annotations

import atexit
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from django.conf import settings
from opentelemetry import trace
from opentelemetry.metrics import Meter, NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from observability.telemetry.broker import broker_of, client_id
from observability.telemetry.in_process_metrics import OTLPMetricExporterWithHistograms
from observability.telemetry.instruments import Instruments, TaskHistograms, views
from observability.telemetry.pool_slots import PoolSlot, forget_node, node_dir, remove_node_dir, slot_index
from observability.telemetry.span_processor import HandOffSpanProcessor
from observability.telemetry.task_span_export import TaskSpanExporter
from observability.telemetry.task_spans import TaskSpans

__all__ = ["METER", "Telemetry", "current", "setup", "shutdown"]

log = structlog.get_logger("observability.task")

METER = "marketplace"
#: Longest a span that fills an export batch waits for that export (``observability.telemetry.span_processor``): one
#: task in 2048 waits this long at worst, when the collector is slow or unreachable.
SPAN_HAND_OFF_TIMEOUT_SECONDS = 0.05


class _SilentInForkedChildReader(PeriodicExportingMetricReader):
    """The worker main process's reader: a forked child inherits the object but must never export the
    parent's numbers under the parent's identity, so the export thread is not restarted after fork."""

    def _at_fork_reinit(self) -> None:
        return None


@dataclass
class Telemetry:
    """This process's telemetry: task spans (none when off), the instruments, and what to flush."""

    pid: int
    role: str
    task_spans: TaskSpans | None
    instruments: Instruments
    providers: list[Any] = field(default_factory=list)
    #: The worker main process's folder of its pool slots' files, removed when it stops
    pool_slots_dir: Path | None = None
    #: Spans other than a task's publish and run (beat's ticks): the SDK's tracer, a no-op one when off
    tracer: trace.Tracer = field(default_factory=trace.NoOpTracer)


_current: Telemetry | None = None


class _Resource(Resource):
    """A resource whose hash is computed once. The OTLP span encoder groups every span of a batch by resource,
    and ``Resource.__hash__`` serialises all its attributes to JSON each time: 3-4 us per span (bench.hooks)."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


def _resource(role: str, instance_id: str | None = None) -> Resource:
    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME") or f"marketplace-{role}",
            "service.namespace": "marketplace",
            # A source of cumulative series: unique per process, or a pool slot's (one child at a time).
            "service.instance.id": instance_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}",
            "deployment.environment.name": settings.SENTRY_ENVIRONMENT,
        }
    )
    return _Resource(resource)


def setup(
    role: str,
    *,
    fork_safe_metrics: bool = False,
    gauges: Iterable[Callable[[Meter], None]] = (),
    instrument: Callable[[TracerProvider], None] | None = None,
    nodename: str | None = None,
    pool_child: bool = False,
) -> Telemetry:
    """Build this process's providers (again after a fork). ``fork_safe_metrics`` for a process that
    forks children later (the worker's main process); ``gauges`` register observable gauges;
    ``instrument`` installs library instrumentations against the tracer provider; ``nodename``, a worker's, is
    the spans' ``messaging.client.id``; ``pool_child`` for a worker's pool child, which exports as
    ``<nodename>-slot<N>`` and continues its slot's sums (``pool_slots``)."""
    global _current
    endpoint = settings.OTEL_EXPORTER_OTLP_ENDPOINT or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not endpoint:
        _current = _off(role)
        return _current

    slot = _pool_slot(nodename) if pool_child else None
    slots_dir = forget_node(nodename) if fork_safe_metrics and nodename else None
    resource = _resource(role, slot.instance_id if slot is not None else None)
    # shutdown_on_exit=False: this module's ``shutdown`` runs at exit instead, bounded (the SDK's waits out the
    # exporters' retries, ~10 s each with the collector down).
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    span_processor = HandOffSpanProcessor(
        TaskSpanExporter(resource, scope=METER), hand_off_timeout_seconds=SPAN_HAND_OFF_TIMEOUT_SECONDS
    )
    tracer_provider.add_span_processor(span_processor)
    histograms = TaskHistograms()
    exporter = OTLPMetricExporterWithHistograms(
        histograms.all(), resource=resource, scope=METER, carry=slot.continued if slot is not None else None
    )
    reader_cls = _SilentInForkedChildReader if fork_safe_metrics else PeriodicExportingMetricReader
    reader: MetricReader = reader_cls(exporter, export_interval_millis=settings.OTEL_METRIC_EXPORT_INTERVAL_MILLIS)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader], views=views(), shutdown_on_exit=False)
    meter = meter_provider.get_meter(METER)
    for register in gauges:
        register(meter)
    if instrument is not None:
        instrument(tracer_provider)
    _current = Telemetry(
        pid=os.getpid(),
        role=role,
        task_spans=TaskSpans(
            tracer_provider,
            span_processor,
            {
                **broker_of(settings.CELERY_BROKER_URL).attributes(),
                "messaging.client.id": client_id(role, nodename),
            },
        ),
        instruments=Instruments.create(meter, histograms),
        providers=[tracer_provider, meter_provider],
        pool_slots_dir=slots_dir,
        tracer=tracer_provider.get_tracer(METER),
    )
    return _current


def _pool_slot(nodename: str | None) -> PoolSlot | None:
    """This pool child's slot; None (a source of its own) outside a billiard pool or without a private folder."""
    index = slot_index()
    folder = node_dir(nodename) if nodename and index is not None else None
    if nodename is None or index is None or folder is None:
        return None
    return PoolSlot(folder, nodename, index)


def current() -> Telemetry:
    """This process's telemetry; a process that never set it up (or a fork of one) gets no-op hooks."""
    global _current
    if _current is None:
        _current = _off("process")
    return _current


def _forget_after_fork() -> None:
    # A forked child must not use its parent's providers: it gets no-op hooks until it calls setup(). Reset
    # here once, rather than comparing os.getpid() on each of a task's calls (a system call each time).
    global _current
    _current = None


os.register_at_fork(after_in_child=_forget_after_fork)


def _off(role: str) -> Telemetry:
    meter = NoOpMeterProvider().get_meter(METER)
    return Telemetry(os.getpid(), role, None, Instruments.create(meter, None))


def shutdown() -> None:
    """Flush and stop this process's providers, waiting at most ``settings.TELEMETRY_SHUTDOWN_TIMEOUT_SECONDS``
    in all; what is not exported by then is lost, and logged. Runs at exit (``atexit``), when a worker child
    exits (``worker_process_shutdown``) and when a worker stops (``worker_shutdown``); the first call does it.

    The bound matters in a worker child: billiard tells the pool that a child has gone only after its exit
    handlers return, so until then the pool is a child short and a task it handed that child waits. With the
    collector unreachable the exporters' retries held an exiting child for ~20 s, a stopping worker ~12 s.
    """
    global _current
    state = _current
    if state is None or state.pid != os.getpid():
        return
    _current = None  # later hooks are no-ops, and a second call does nothing
    timeout = settings.TELEMETRY_SHUTDOWN_TIMEOUT_SECONDS
    deadline = time.monotonic() + timeout
    # One thread per provider: spans and metrics are exported at once, and a hung export can be left behind
    # (daemon threads: the exiting process does not wait for them).
    stopping = [
        threading.Thread(target=provider.shutdown, name=f"telemetry-shutdown-{type(provider).__name__}", daemon=True)
        for provider in state.providers
    ]
    for thread in stopping:
        thread.start()
    for thread in stopping:
        thread.join(max(0.0, deadline - time.monotonic()))
    unfinished = [thread.name for thread in stopping if thread.is_alive()]
    if state.pool_slots_dir is not None:
        remove_node_dir(state.pool_slots_dir)  # the worker's main process: its children have exited
    if unfinished:
        log.warning(
            "telemetry.shutdown_timed_out",
            timeout_seconds=timeout,
            unfinished=unfinished,
            detail="the collector did not take this process's last spans or metrics in time: they are lost",
        )


atexit.register(shutdown)
