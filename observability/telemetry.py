"""OpenTelemetry traces and metrics, set up per process and correct under prefork.

- ``setup(role)`` builds this process's providers with a resource naming the role (web, worker, beat, cli)
  and a per-process ``service.instance.id``; export goes over OTLP, configured by the standard ``OTEL_*``
  variables. Without ``OTEL_EXPORTER_OTLP_ENDPOINT`` nothing is installed and every hook is a no-op.
- Worker children call it after fork (``worker_process_init``) and ``shutdown()`` flushes before a child
  exits (``worker_process_shutdown``), so nothing is lost when ``max_tasks_per_child`` recycles it - unless
  the collector does not take it within ``TELEMETRY_SHUTDOWN_TIMEOUT_SECONDS``: an unreachable collector
  must not hold up the pool. The worker's main process uses a metric reader that stays silent in forked
  children (no duplicate series).
- Providers are kept here, not installed globally: a child can rebuild them after fork, which the global
  API forbids.
- Task runs get one CONSUMER span (``run/<task>``, OpenTelemetry messaging attributes, parent from the
  message's W3C ``traceparent``; a replayed dead letter links to its original trace) on the lean path of
  ``observability.task_spans``, the task metrics of ``observability.metric_names`` and one summary log line.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import structlog
from django.conf import settings
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import Meter, NoOpMeterProvider
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Link, Status, StatusCode

from observability import metric_names as m
from observability.in_process_metrics import InProcessCounter, InProcessHistogram, OTLPMetricExporterWithHistograms
from observability.logging import bind_task_context, clear_task_context
from observability.span_processor import HandOffSpanProcessor
from observability.task_spans import TaskSpanExporter, TaskSpans

__all__ = [
    "PUBLISHED_AT_HEADER",
    "REPLAY_TRACEPARENT_HEADER",
    "TaskRun",
    "current",
    "dead_letter_created",
    "dead_letters_purged",
    "dead_letters_replayed",
    "notifications_delivered",
    "on_publish",
    "promos_synced",
    "setup",
    "shutdown",
    "task_finished",
    "task_outcome_in_main",
    "task_started",
]

log = structlog.get_logger("observability.task")

#: Header the producer sets: publish time (unix seconds), for the queue-wait histogram.
PUBLISHED_AT_HEADER = "x-published-at"
#: Header of a replayed dead letter: the ``traceparent`` of the failed message, for a span link.
REPLAY_TRACEPARENT_HEADER = "x-dead-letter-traceparent"

#: The instrumentation scope of the project's metrics and task spans.
METER = "marketplace"
#: Longest a span that fills an export batch waits for that export (``observability.span_processor``): one
#: task in 512 waits this long at worst, when the collector is slow or unreachable.
SPAN_HAND_OFF_TIMEOUT_SECONDS = 0.05
_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


class _SilentInForkedChildReader(PeriodicExportingMetricReader):
    """The worker main process's reader: a forked child inherits the object but must never export the
    parent's numbers under the parent's identity, so the export thread is not restarted after fork."""

    def _at_fork_reinit(self) -> None:
        return None


@dataclass
class _TaskHistograms:
    """The two histograms every task run records, summed in-process and added to each metrics export."""

    duration: InProcessHistogram = field(
        default_factory=lambda: InProcessHistogram(
            m.TASK_DURATION, unit="s", description="Task run duration, every outcome", bounds=_SECONDS_BUCKETS
        )
    )
    queue_wait: InProcessHistogram = field(
        default_factory=lambda: InProcessHistogram(
            m.TASK_QUEUE_WAIT, unit="s", description="Publish (or ETA) to start", bounds=_WAIT_BUCKETS
        )
    )


class _TaskCounter(Protocol):
    def add(self, amount: int, attributes: Mapping[str, str]) -> None: ...


class _TaskHistogram(Protocol):
    def record(self, value: float, attributes: Mapping[str, str]) -> None: ...


class _Discard:
    """The per-publish and per-run counters and histograms of a process without telemetry: its in-process sums
    would never be exported, and keeping them cost about 6 us per task run (bench.child_path, ``reliability``
    variant)."""

    def add(self, amount: int, attributes: Mapping[str, str]) -> None:
        return None

    def record(self, value: float, attributes: Mapping[str, str]) -> None:
        return None


@dataclass
class _Instruments:
    published: _TaskCounter
    started: _TaskCounter
    finished: _TaskCounter
    duration: _TaskHistogram
    queue_wait: _TaskHistogram
    dead_letters_created: Any
    dead_letters_replayed: Any
    dead_letters_purged: Any
    activation_lag: Any
    promos_activated: Any
    promos_ended: Any
    notifications_sent: Any
    notifications_failed: Any

    @classmethod
    def create(cls, meter: Meter, histograms: _TaskHistograms | None) -> _Instruments:
        """The instruments of ``meter``; the per-publish and per-run ones discard everything when ``histograms`` is
        None."""
        counter, histogram = meter.create_counter, meter.create_histogram
        published: _TaskCounter
        started: _TaskCounter
        finished: _TaskCounter
        duration: _TaskHistogram
        queue_wait: _TaskHistogram
        if histograms is None:
            published = started = finished = duration = queue_wait = _Discard()
        else:
            # Every publish counts too: the SDK counter took ~30 us of a ~1 ms .delay() (py-spy, bench.publish).
            published = InProcessCounter(meter, m.TASKS_PUBLISHED, unit="{task}", description="Task messages published")
            started = InProcessCounter(meter, m.TASKS_STARTED, unit="{task}", description="Task runs started")
            finished = InProcessCounter(
                meter, m.TASKS_FINISHED, unit="{task}", description="Task runs finished, by outcome"
            )
            duration, queue_wait = histograms.duration, histograms.queue_wait
        return cls(
            published=published,
            started=started,
            finished=finished,
            duration=duration,
            queue_wait=queue_wait,
            dead_letters_created=counter(m.DEAD_LETTERS_CREATED, unit="{entry}", description="Dead letters"),
            dead_letters_replayed=counter(m.DEAD_LETTERS_REPLAYED, unit="{entry}", description="Replays"),
            dead_letters_purged=counter(m.DEAD_LETTERS_PURGED, unit="{entry}", description="Purged entries"),
            activation_lag=histogram(m.PROMO_ACTIVATION_LAG, unit="s", description="activated_at - starts_at"),
            promos_activated=counter(m.PROMOS_ACTIVATED, unit="{promo}", description="Promos activated"),
            promos_ended=counter(m.PROMOS_ENDED, unit="{promo}", description="Promos ended"),
            notifications_sent=counter(m.NOTIFICATIONS_SENT, unit="{notification}", description="Delivered"),
            notifications_failed=counter(m.NOTIFICATIONS_FAILED, unit="{notification}", description="Gave up"),
        )


@dataclass
class Telemetry:
    """This process's telemetry: task spans (none when off), the instruments, and what to flush."""

    pid: int
    role: str
    task_spans: TaskSpans | None
    instruments: _Instruments
    providers: list[Any] = field(default_factory=list)


_current: Telemetry | None = None


class _Resource(Resource):
    """A resource whose hash is computed once. The OTLP span encoder groups every span of a batch by resource,
    and ``Resource.__hash__`` serialises all its attributes to JSON each time: 3-4 us per span (bench.hooks)."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


def _resource(role: str) -> Resource:
    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME") or f"marketplace-{role}",
            "service.namespace": "marketplace",
            # Unique per process: each prefork child is a separate source of cumulative series.
            "service.instance.id": f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}",
            "deployment.environment.name": settings.SENTRY_ENVIRONMENT,
        }
    )
    return _Resource(resource)


def _views() -> list[View]:
    return [
        View(instrument_name=m.PROMO_ACTIVATION_LAG, aggregation=ExplicitBucketHistogramAggregation(_LAG_BUCKETS)),
    ]


def setup(
    role: str,
    *,
    fork_safe_metrics: bool = False,
    gauges: Iterable[Callable[[Meter], None]] = (),
    instrument: Callable[[TracerProvider], None] | None = None,
) -> Telemetry:
    """Build this process's providers (again after a fork). ``fork_safe_metrics`` for a process that
    forks children later (the worker's main process); ``gauges`` register observable gauges;
    ``instrument`` installs library instrumentations against the tracer provider."""
    global _current
    endpoint = settings.OTEL_EXPORTER_OTLP_ENDPOINT or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not endpoint:
        _current = _off(role)
        return _current

    resource = _resource(role)
    # shutdown_on_exit=False: this module's ``shutdown`` runs at exit instead, bounded (the SDK's waits out the
    # exporters' retries, ~10 s each with the collector down).
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    span_processor = HandOffSpanProcessor(
        TaskSpanExporter(resource, scope=METER), hand_off_timeout_seconds=SPAN_HAND_OFF_TIMEOUT_SECONDS
    )
    tracer_provider.add_span_processor(span_processor)
    histograms = _TaskHistograms()
    exporter = OTLPMetricExporterWithHistograms(
        [histograms.duration, histograms.queue_wait], resource=resource, scope=METER
    )
    reader_cls = _SilentInForkedChildReader if fork_safe_metrics else PeriodicExportingMetricReader
    reader: MetricReader = reader_cls(exporter, export_interval_millis=settings.OTEL_METRIC_EXPORT_INTERVAL_MILLIS)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader], views=_views(), shutdown_on_exit=False)
    meter = meter_provider.get_meter(METER)
    for register in gauges:
        register(meter)
    if instrument is not None:
        instrument(tracer_provider)
    _current = Telemetry(
        pid=os.getpid(),
        role=role,
        task_spans=TaskSpans(tracer_provider, span_processor),
        instruments=_Instruments.create(meter, histograms),
        providers=[tracer_provider, meter_provider],
    )
    return _current


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
    return Telemetry(os.getpid(), role, None, _Instruments.create(meter, None))


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
    if unfinished:
        log.warning(
            "telemetry.shutdown_timed_out",
            timeout_seconds=timeout,
            unfinished=unfinished,
            detail="the collector did not take this process's last spans or metrics in time: they are lost",
        )


atexit.register(shutdown)


# --- Producer --------------------------------------------------------------------------------------------------
def on_publish(headers: dict[str, Any], task_name: str, queue: str) -> None:
    """Before a task message leaves: propagate the current trace and stamp the publish time."""
    state = current()
    headers[PUBLISHED_AT_HEADER] = time.time()
    if state.task_spans is not None:
        inject(headers)
    state.instruments.published.add(1, {"task": task_name, "queue": queue})


# --- Task runs (worker child) ------------------------------------------------------------------------------------
@dataclass
class TaskRun:
    task_name: str
    attributes: dict[str, str]
    started: float
    queue_wait: float | None
    span: trace.Span
    token: object


def _queue_wait(request: Any, now: float) -> float | None:
    published_at = _header(request, PUBLISHED_AT_HEADER)
    if published_at is None:
        return None
    ready_at = float(published_at)
    if request.eta:
        # A deliberate delay (ETA, countdown, retry backoff) is not waiting in the queue.
        eta = request.eta if isinstance(request.eta, datetime) else datetime.fromisoformat(str(request.eta))
        ready_at = max(ready_at, eta.timestamp())
    return max(now - ready_at, 0.0)


def _header(request: Any, name: str) -> Any:
    # Celery puts a protocol-2 message's headers, custom ones included, into the request's attributes.
    return request.__dict__.get(name)


def _links(request: Any) -> list[Link]:
    traceparent = _header(request, REPLAY_TRACEPARENT_HEADER)
    if not traceparent:
        return []
    span_context = trace.get_current_span(extract({"traceparent": traceparent})).get_span_context()
    return [Link(span_context, {"dead_letter.replay_of": str(_header(request, "x-dead-letter-replay-of"))})]


# Metric attribute sets, built once per (task, queue[, outcome, error type]) and shared by every run: the SDK
# copies what it keeps. Task names, queues and outcomes are few; a bound keeps odd error types from growing it.
_attribute_sets: dict[tuple[str, ...], dict[str, str]] = {}


def _attribute_set(task: str, queue: str, *more: str) -> dict[str, str]:
    key = (task, queue, *more)
    attributes = _attribute_sets.get(key)
    if attributes is None:
        if len(_attribute_sets) > 1024:
            _attribute_sets.clear()
        attributes = {"task": task, "queue": queue}
        if more:
            attributes["outcome"] = more[0]
        if len(more) > 1:
            attributes["error_type"] = more[1]
        _attribute_sets[key] = attributes
    return attributes


def task_started(task_name: str, request: Any) -> TaskRun:
    """Start the run's span, bind its log context and count it."""
    state = current()
    now = time.time()
    queue = (request.delivery_info or {}).get("routing_key") or "celery"
    task_id = str(request.id)
    retries = int(request.retries or 0)
    attributes = _attribute_set(task_name, queue)
    span: trace.Span = trace.INVALID_SPAN
    token: object = None
    if state.task_spans is not None:
        span = state.task_spans.start(
            task_name,
            queue,
            parent=extract(request.__dict__) if _header(request, "traceparent") else None,
            message_id=task_id,
            retries=retries,
            links=_links(request),
        )
        token = otel_context.attach(trace.set_span_in_context(span))
    bind_task_context(task_name=task_name, task_id=task_id, retries=retries)
    state.instruments.started.add(1, attributes)
    wait = _queue_wait(request, now)
    if wait is not None:
        state.instruments.queue_wait.record(wait, attributes)
    return TaskRun(task_name, attributes, time.perf_counter(), wait, span, token)


def task_finished(run: TaskRun, outcome: str, error: BaseException | None = None) -> None:
    """Record the run's outcome and duration, end its span, log the summary line, unbind the context."""
    state = current()
    duration = time.perf_counter() - run.started
    error_type = type(error).__name__ if error is not None else ""
    task, queue = run.attributes["task"], run.attributes["queue"]
    state.instruments.finished.add(1, _attribute_set(task, queue, outcome, error_type))
    # Recorded while the span is current, so the histogram sample carries it as an exemplar.
    state.instruments.duration.record(duration, _attribute_set(task, queue, outcome))
    # The chain's level filter, asked before the event is built: at WARNING a dropped line cost 5 us per run.
    if log.isEnabledFor(logging.INFO):
        log.info(
            "task.finished",
            outcome=outcome,
            # Microseconds rounded to an int, then shown in ms: round(x, 3) of a float costs four times as much.
            duration_ms=round(duration * 1_000_000) / 1000,
            queue_wait_ms=None if run.queue_wait is None else round(run.queue_wait * 1_000_000) / 1000,
            error_type=error_type or None,
        )
    clear_task_context()
    if run.token is not None:
        run.span.set_attribute("celery.outcome", outcome)
        if error is not None and outcome != "retried":
            run.span.set_attribute("error.type", error_type)
            run.span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
        run.span.end()
        otel_context.detach(run.token)  # type: ignore[arg-type]


# --- Outcomes decided in the worker's main process ------------------------------------------------------------
def task_outcome_in_main(task_name: str, queue: str, outcome: str, error_type: str, duration: float | None) -> None:
    """Count a run whose end the child could not report (killed at its time limit, worker lost, rejected)."""
    instruments = current().instruments
    attributes = {"task": task_name or "(unknown)", "queue": queue or "celery"}
    instruments.finished.add(1, {**attributes, "outcome": outcome, "error_type": error_type})
    if duration is not None:
        instruments.duration.record(duration, {**attributes, "outcome": outcome})


def dead_letter_created(task_name: str, reason: str) -> None:
    current().instruments.dead_letters_created.add(1, {"task": task_name or "(none)", "reason": reason})


def dead_letters_replayed(task_names: Iterable[str]) -> None:
    counter = current().instruments.dead_letters_replayed
    for name in task_names:
        counter.add(1, {"task": name})


def dead_letters_purged(counts: Mapping[str, int]) -> None:
    counter = current().instruments.dead_letters_purged
    for status, count in counts.items():
        counter.add(count, {"status": status})


# --- Domain -------------------------------------------------------------------------------------------------------
def promos_synced(activation_lags_seconds: Iterable[float], ended: int) -> None:
    instruments = current().instruments
    lags = list(activation_lags_seconds)
    for lag in lags:
        instruments.activation_lag.record(lag)
    if lags:
        instruments.promos_activated.add(len(lags))
    if ended:
        instruments.promos_ended.add(ended)


def notifications_delivered(*, channel: str, sent: int, failed: int) -> None:
    instruments = current().instruments
    if sent:
        instruments.notifications_sent.add(sent, {"channel": channel})
    if failed:
        instruments.notifications_failed.add(failed, {"channel": channel})
