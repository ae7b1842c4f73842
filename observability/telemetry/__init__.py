"""Telemetry: OpenTelemetry traces and metrics of every process, and the one list of metric names.

Owns: this process's providers (``providers``: set up per process, after fork in each pool child, flushed
within a bound at exit), the span and metrics of each publish (``publishes``) and task run (``runs``), the
broker and client as the spans name them (``broker``), the counters of the project's events (``events``), the
instruments (``instruments``), the span processor (``span_processor``) and the metric names the dashboards and
alerts use (``metric_names``).

May import: ``observability.logs`` (a run's log context). Must not import the base task, the message path,
the dead-letter store or Sentry: they call into it. Other rooms import from this package's face below.
"""

from observability.telemetry.events import (
    beat_ticked,
    dead_letter_created,
    dead_letters_purged,
    dead_letters_replayed,
    notifications_delivered,
    notifications_rate_limit_waited,
    notifications_throttled,
    promos_synced,
)
from observability.telemetry.providers import METER, Telemetry, current, setup, shutdown
from observability.telemetry.publishes import (
    PUBLISHED_AT_HEADER,
    Publish,
    on_publish,
    publish_finished,
    publish_started,
)
from observability.telemetry.runs import (
    REPLAY_TRACEPARENT_HEADER,
    TaskRun,
    task_finished,
    task_outcome_in_main,
    task_result_unstored,
    task_started,
)

__all__ = [
    "METER",
    "PUBLISHED_AT_HEADER",
    "REPLAY_TRACEPARENT_HEADER",
    "Publish",
    "TaskRun",
    "Telemetry",
    "beat_ticked",
    "current",
    "dead_letter_created",
    "dead_letters_purged",
    "dead_letters_replayed",
    "notifications_delivered",
    "notifications_rate_limit_waited",
    "notifications_throttled",
    "on_publish",
    "promos_synced",
    "publish_finished",
    "publish_started",
    "setup",
    "shutdown",
    "task_finished",
    "task_outcome_in_main",
    "task_result_unstored",
    "task_started",
]
