"""The metrics the dashboards read (names and labels as in ``docs/metrics.md``) and the few PromQL shapes that
every panel is made of, so that each aggregation rule is written once.

Every series also carries ``job`` and ``instance`` (one per process; prefork children come and go), so no
query reads a raw series: counters are summed over processes, and the gauges that each worker's main process
reports alike are reduced with ``max``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "BEAT_INTERVAL",
    "BEAT_LAST_SUCCESS",
    "DEAD_LETTERS_OLDEST_PENDING_AGE",
    "DEAD_LETTERS_PENDING",
    "FAILURE_OUTCOMES",
    "NOTIFICATIONS_BACKLOG",
    "NOTIFICATIONS_FAILED",
    "NOTIFICATIONS_SENT",
    "PROMOS_ACTIVATED",
    "PROMOS_ENDED",
    "PROMO_ACTIVATION_LAG",
    "QUEUE_BACKLOG",
    "QUEUE_OLDEST_MESSAGE_AGE",
    "RATE_WINDOW",
    "TASKS_FINISHED",
    "TASKS_PUBLISHED",
    "TASK_DURATION",
    "TASK_QUEUE_WAIT",
    "USED_METRICS",
    "WORKER_HEARTBEAT",
    "WORKER_LAST_RECEIVED",
    "WORKER_TASKS",
    "Metric",
    "Scope",
    "gauge",
    "increase_sum",
    "quantile",
    "rate_sum",
    "ratio",
]

#: Grafana widens it to at least four scrape intervals, so a rate never spans fewer than two samples.
RATE_WINDOW = "$__rate_interval"
#: Outcomes that count as failures: dead-lettered, killed mid-run (redelivered) or never run.
FAILURE_OUTCOMES = ("dead_lettered", "failed", "rejected")


@dataclass(frozen=True)
class Metric:
    """A Prometheus name from ``docs/metrics.md`` with the labels it carries besides ``job`` and ``instance``."""

    name: str
    labels: frozenset[str] = frozenset()


def _metric(name: str, *labels: str) -> Metric:
    return Metric(name, frozenset(labels))


TASKS_PUBLISHED = _metric("celery_tasks_published_total", "task", "queue")
TASKS_FINISHED = _metric("celery_tasks_finished_total", "task", "queue", "outcome", "error_type")
TASK_DURATION = _metric("celery_task_duration_seconds", "task", "queue", "outcome")
TASK_QUEUE_WAIT = _metric("celery_task_queue_wait_seconds", "task", "queue")
QUEUE_BACKLOG = _metric("celery_queue_backlog", "queue", "priority")
QUEUE_OLDEST_MESSAGE_AGE = _metric("celery_queue_oldest_message_age_seconds", "queue", "priority")
BEAT_LAST_SUCCESS = _metric("celery_beat_last_success_seconds", "entry")
BEAT_INTERVAL = _metric("celery_beat_interval_seconds", "entry")
BEAT_TICKS = _metric("celery_beat_ticks_total", "entry", "outcome")
WORKER_HEARTBEAT = _metric("celery_worker_heartbeat_seconds", "queue")
WORKER_LAST_RECEIVED = _metric("celery_worker_last_received_seconds", "queue")
WORKER_TASKS = _metric("celery_worker_tasks", "state")
DEAD_LETTERS_PENDING = _metric("dead_letters_pending", "task", "reason")
DEAD_LETTERS_OLDEST_PENDING_AGE = _metric("dead_letters_oldest_pending_age_seconds")
PROMO_ACTIVATION_LAG = _metric("promotions_activation_lag_seconds")
PROMOS_ACTIVATED = _metric("promotions_activated_total")
PROMOS_ENDED = _metric("promotions_ended_total")
NOTIFICATIONS_SENT = _metric("notifications_sent_total", "channel")
NOTIFICATIONS_FAILED = _metric("notifications_failed_total", "channel")
NOTIFICATIONS_BACKLOG = _metric("notifications_backlog", "status")

#: Every metric above; ``tests/dashboards/test_dashboards.py`` checks each name and label set against
#: ``docs/metrics.md``.
USED_METRICS = (
    TASKS_PUBLISHED,
    TASKS_FINISHED,
    TASK_DURATION,
    TASK_QUEUE_WAIT,
    QUEUE_BACKLOG,
    QUEUE_OLDEST_MESSAGE_AGE,
    BEAT_LAST_SUCCESS,
    BEAT_INTERVAL,
    BEAT_TICKS,
    WORKER_HEARTBEAT,
    WORKER_LAST_RECEIVED,
    WORKER_TASKS,
    DEAD_LETTERS_PENDING,
    DEAD_LETTERS_OLDEST_PENDING_AGE,
    PROMO_ACTIVATION_LAG,
    PROMOS_ACTIVATED,
    PROMOS_ENDED,
    NOTIFICATIONS_SENT,
    NOTIFICATIONS_FAILED,
    NOTIFICATIONS_BACKLOG,
)


@dataclass(frozen=True)
class Scope:
    """The dashboard variables that narrow a query: label ``x`` is matched against ``$x`` on every metric that
    has it, so a dashboard with a queue variable cannot forget to filter a metric by queue."""

    variables: tuple[str, ...] = ()

    def select(self, metric: Metric, *matchers: str, suffix: str = "") -> str:
        """``metric`` (plus a histogram ``suffix`` such as ``_bucket``) with the variable and extra matchers."""
        filters = [f'{label}=~"${label}"' for label in self.variables if label in metric.labels]
        body = ", ".join([*filters, *matchers])
        return f"{metric.name}{suffix}{{{body}}}" if body else f"{metric.name}{suffix}"


def _aggregate(operator: str, by: Sequence[str], inner: str) -> str:
    return f"{operator} by ({', '.join(by)}) ({inner})" if by else f"{operator}({inner})"


def rate_sum(scope: Scope, metric: Metric, *matchers: str, by: Sequence[str] = ()) -> str:
    """Per-second rate of a counter, summed over the processes that count it."""
    return _aggregate("sum", by, f"rate({scope.select(metric, *matchers)}[{RATE_WINDOW}])")


def increase_sum(scope: Scope, metric: Metric, *matchers: str, window: str = "$__range") -> str:
    """How much a counter grew over ``window`` (the dashboard's time range), summed over processes."""
    return _aggregate("sum", (), f"increase({scope.select(metric, *matchers)}[{window}])")


def quantile(q: float, scope: Scope, metric: Metric, *, by: Sequence[str] = (), window: str = RATE_WINDOW) -> str:
    """The ``q`` quantile of a histogram, its buckets summed over processes first (as the maths requires)."""
    buckets = scope.select(metric, suffix="_bucket")
    return f"histogram_quantile({q}, {_aggregate('sum', ['le', *by], f'rate({buckets}[{window}])')})"


def gauge(scope: Scope, metric: Metric, *, by: Sequence[str] = (), total: bool = True) -> str:
    """A gauge that every worker main process reports alike: ``max`` over processes for each of the metric's
    own label sets, then (``total``) summed to the ``by`` labels."""
    per_series = _aggregate("max", sorted(metric.labels), scope.select(metric))
    return _aggregate("sum", by, per_series) if total and metric.labels else per_series


def ratio(part: str, whole: str, *, idle_is_zero: bool = False) -> str:
    """``part / whole`` for two sums with the same ``by`` labels. A ``part`` with no series yet (an outcome
    that never happened is never exported) counts as 0 for every series of ``whole``; ``idle_is_zero``
    also turns a window with no ``whole`` into 0 instead of 0/0 (for single stats of rare events)."""
    fallback = f"({part} or 0 * ({whole}))"
    return f"{fallback} / ({whole} > 0) or vector(0)" if idle_is_zero else f"{fallback} / ({whole})"
