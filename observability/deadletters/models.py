"""Dead letters: every task message that ended without success and will not be retried by itself.

One row per failed message (keyed by task id, or by a digest of the raw bytes when there is no id), with
what is needed to understand the failure and to publish the task again; replays are kept as history.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class DeadLetterReason(models.TextChoices):
    MAX_RETRIES_EXCEEDED = "max_retries_exceeded"
    NON_RETRYABLE_ERROR = "non_retryable_error"
    TIME_LIMIT_EXCEEDED = "time_limit_exceeded"
    POISON_MESSAGE = "poison_message"
    UNREGISTERED_TASK = "unregistered_task"
    UNDECODABLE_MESSAGE = "undecodable_message"
    #: A Celery built-in (``celery.chord_unlock``, ``celery.chain``...): workers run only the project's tasks.
    BUILTIN_TASK = "builtin_task"
    #: Larger than ``CELERY_TASK_MAX_MESSAGE_BYTES``: stored truncated, with its real size.
    MESSAGE_TOO_LARGE = "message_too_large"
    #: Redis refused to hold a healthy message unacknowledged, and to take it back (out of memory, MISCONF).
    BROKER_REFUSED = "broker_refused"


class DeadLetterStatus(models.TextChoices):
    PENDING = "pending"
    REPLAYED = "replayed"
    DISCARDED = "discarded"


class DeadLetter(models.Model):
    #: Task id, or ``raw:<sha256>`` of the message bytes when there is no usable id: a message recorded
    #: twice (a crash between the write and the acknowledgement) updates its row instead of adding one.
    dedup_key = models.CharField(max_length=100, unique=True)
    reason = models.CharField(max_length=32, choices=DeadLetterReason.choices)
    status = models.CharField(max_length=16, choices=DeadLetterStatus.choices, default=DeadLetterStatus.PENDING)
    task_name = models.CharField(max_length=255, blank=True, default="")
    task_id = models.CharField(max_length=255, blank=True, default="")
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    #: Message headers as received (protocol 2), replayed as they were apart from the new id.
    headers = models.JSONField(default=dict, blank=True)
    queue = models.CharField(max_length=255, blank=True, default="")
    exchange = models.CharField(max_length=255, blank=True, default="")
    routing_key = models.CharField(max_length=255, blank=True, default="")
    #: The undecodable message's bytes (UTF-8 with replacement), for messages that are not a task.
    raw_message = models.TextField(blank=True, default="")
    retries = models.PositiveIntegerField(default=0)
    delivery_count = models.PositiveIntegerField(default=1)
    #: How many times this message reached a dead end (more than 1 only after a recording was retried).
    failure_count = models.PositiveIntegerField(default=1)
    exception_type = models.CharField(max_length=255, blank=True, default="")
    exception_message = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    worker_host = models.CharField(max_length=255, blank=True, default="")
    trace_id = models.CharField(max_length=32, blank=True, default="")
    #: Groups entries that fail the same way: task, reason and exception type.
    fingerprint = models.CharField(max_length=16)
    first_failed_at = models.DateTimeField()
    last_failed_at = models.DateTimeField()

    class Meta:
        ordering = ["-last_failed_at", "-id"]
        permissions = [
            ("replay_deadletter", "Can replay or discard dead letters"),
            # Deleting evidence is its own right, and goes through dead_letters_purge (counted and logged).
            ("purge_deadletter", "Can purge (delete) dead letters"),
        ]
        indexes = [
            models.Index(fields=["status", "last_failed_at"], name="deadletter_status_time"),
            models.Index(fields=["task_name", "last_failed_at"], name="deadletter_task_time"),
            models.Index(fields=["reason", "last_failed_at"], name="deadletter_reason_time"),
            models.Index(fields=["fingerprint"], name="deadletter_fingerprint"),
            # Retention and `dlq purge --older-than` select by time alone.
            models.Index(fields=["last_failed_at"], name="deadletter_last_failed"),
            models.Index(fields=["first_failed_at"], name="deadletter_pending_age", condition=Q(status="pending")),
        ]

    def __str__(self) -> str:
        return f"dead letter {self.pk}: {self.task_name or '(no task)'} {self.reason}"


class DeadLetterReplay(models.Model):
    """One publication of a dead letter's task: who, when, under which new task id, to which queue."""

    dead_letter = models.ForeignKey(DeadLetter, on_delete=models.CASCADE, related_name="replays")
    new_task_id = models.CharField(max_length=255)
    queue = models.CharField(max_length=255, blank=True, default="")
    operator = models.CharField(max_length=150)
    replayed_at = models.DateTimeField()

    class Meta:
        ordering = ["-replayed_at", "-id"]

    def __str__(self) -> str:
        return f"replay of {self.dead_letter_id} as {self.new_task_id}"
