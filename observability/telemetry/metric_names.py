"""Every metric the project records, by its OpenTelemetry name: the one list the dashboards and alerts use.

Prometheus names (through the OpenTelemetry Collector's Prometheus exporter) replace dots with
underscores and append the unit and ``_total`` for counters: ``celery.tasks.finished`` is scraped as
``celery_tasks_finished_total``, ``celery.task.duration`` (unit ``s``) as ``celery_task_duration_seconds``.
``docs/metrics.md`` lists both names with type, unit, labels and meaning.
"""

from __future__ import annotations

__all__ = [
    "BEAT_INTERVAL",
    "BEAT_LAST_SUCCESS",
    "BEAT_TICKS",
    "DEAD_LETTERS_CREATED",
    "DEAD_LETTERS_OLDEST_PENDING_AGE",
    "DEAD_LETTERS_PENDING",
    "DEAD_LETTERS_PURGED",
    "DEAD_LETTERS_REPLAYED",
    "NOTIFICATIONS_BACKLOG",
    "NOTIFICATIONS_FAILED",
    "NOTIFICATIONS_RATE_LIMIT",
    "NOTIFICATIONS_RATE_LIMIT_WAIT",
    "NOTIFICATIONS_SENT",
    "NOTIFICATIONS_THROTTLED",
    "PROMOS_ACTIVATED",
    "PROMOS_ENDED",
    "PROMO_ACTIVATION_LAG",
    "QUEUE_BACKLOG",
    "QUEUE_OLDEST_MESSAGE_AGE",
    "TASKS_FINISHED",
    "TASKS_PUBLISHED",
    "TASKS_PUBLISH_FAILED",
    "TASKS_STARTED",
    "TASK_DURATION",
    "TASK_PUBLISH_DURATION",
    "TASK_QUEUE_WAIT",
    "TASK_RESULTS_UNSTORED",
    "WORKER_HEARTBEAT",
    "WORKER_LAST_RECEIVED",
    "WORKER_TASKS",
]

# Tasks: labels task, queue (+ outcome, error_type where stated). Never task ids or host names.
TASKS_PUBLISHED = "celery.tasks.published"  # counter; task, queue (sent: the broker took it)
TASKS_PUBLISH_FAILED = "celery.tasks.publish_failed"  # counter; task, queue, error_type
TASK_PUBLISH_DURATION = "celery.task.publish_duration"  # histogram, s; task, queue, outcome (sent, failed)
TASKS_STARTED = "celery.tasks.started"  # counter; task, queue
TASKS_FINISHED = "celery.tasks.finished"  # counter; task, queue, outcome, error_type
TASK_DURATION = "celery.task.duration"  # histogram, s; task, queue, outcome
TASK_QUEUE_WAIT = "celery.task.queue_wait"  # histogram, s; task, queue
TASK_RESULTS_UNSTORED = "celery.task.results_unstored"  # counter; task, state
QUEUE_BACKLOG = "celery.queue.backlog"  # gauge; queue, priority
QUEUE_OLDEST_MESSAGE_AGE = "celery.queue.oldest_message_age"  # gauge, s; queue, priority
BEAT_LAST_SUCCESS = "celery.beat.last_success"  # gauge, unix time s; entry
BEAT_INTERVAL = "celery.beat.interval"  # gauge, s; entry
BEAT_TICKS = "celery.beat.ticks"  # counter; entry, outcome (sent, failed)
WORKER_HEARTBEAT = "celery.worker.heartbeat"  # gauge, unix time s; queue
WORKER_LAST_RECEIVED = "celery.worker.last_received"  # gauge, unix time s; queue
WORKER_TASKS = "celery.worker.tasks"  # gauge; state (active, reserved, scheduled)

# Dead letters.
DEAD_LETTERS_CREATED = "dead_letters.created"  # counter; task, reason
DEAD_LETTERS_REPLAYED = "dead_letters.replayed"  # counter; task
DEAD_LETTERS_PURGED = "dead_letters.purged"  # counter; status
DEAD_LETTERS_PENDING = "dead_letters.pending"  # gauge; task, reason
DEAD_LETTERS_OLDEST_PENDING_AGE = "dead_letters.oldest_pending_age"  # gauge, s

# Promotions domain.
PROMO_ACTIVATION_LAG = "promotions.activation_lag"  # histogram, s
PROMOS_ACTIVATED = "promotions.activated"  # counter
PROMOS_ENDED = "promotions.ended"  # counter
NOTIFICATIONS_SENT = "notifications.sent"  # counter; channel
NOTIFICATIONS_FAILED = "notifications.failed"  # counter; channel
NOTIFICATIONS_DELIVERY_LAG = "notifications.delivery_lag"  # histogram, s; channel
NOTIFICATIONS_BACKLOG = "notifications.backlog"  # gauge; status
NOTIFICATIONS_RATE_LIMIT = "notifications.rate_limit"  # gauge, {notification}/s; channel
NOTIFICATIONS_RATE_LIMIT_WAIT = "notifications.rate_limit_wait"  # counter, s; channel
NOTIFICATIONS_THROTTLED = "notifications.throttled"  # counter; channel
