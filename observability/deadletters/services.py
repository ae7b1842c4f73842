"""Dead-letter services: record a failed message, replay entries, purge them.

``dead_letter_record_safely`` is what the worker calls on every terminal path. It writes to Postgres
before the broker message is acknowledged; if Postgres is unreachable it publishes the record as an
``observability.record_dead_letter`` task that retries until the database is back, and if the broker is
unreachable too it raises, so the caller leaves the message unacknowledged: a dead letter is never dropped.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from celery import current_app
from django import db as django_db
from django.db import IntegrityError, close_old_connections, transaction
from django.db.models import F, QuerySet
from django.db.models.functions import Greatest
from django.utils import timezone
from kombu.exceptions import KombuError
from kombu.exceptions import OperationalError as BrokerOperationalError
from redis.exceptions import RedisError

from observability import sentry, telemetry
from observability.deadletters.models import DeadLetter, DeadLetterReplay, DeadLetterStatus
from observability.failure import Failure

__all__ = [
    "ReplayResult",
    "ReplayStoppedError",
    "dead_letter_record",
    "dead_letter_record_deferred",
    "dead_letter_record_safely",
    "dead_letters_discard",
    "dead_letters_purge",
    "dead_letters_replay",
    "record_or_report",
]

log = structlog.get_logger(__name__)

#: Message headers of Celery's protocol 2 that describe one delivery; a replay gets fresh ones.
PROTOCOL_HEADERS = frozenset(
    {
        "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries", "timelimit",
        "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result", "replaced_task_nesting",
        "stamped_headers", "stamps", "redelivered", "traceparent", "tracestate",
        # Added by Sentry's Celery integration to each published message: a replay gets fresh ones.
        "sentry-trace", "baggage", "sentry-task-enqueued-time", "headers",
        # Ours, per delivery: a replay is a fresh delivery of a fresh message (no schedule entry either).
        "x-delivery-count", "x-schedule-entry", "x-published-at", "x-dead-letter-replay-of",
        "x-dead-letter-traceparent",
        # RabbitMQ's, per delivery: the dead-lettering hops of native delayed delivery (a countdown, a retry).
        "x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
        "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason",
    }
)  # fmt: skip
#: Header naming the dead letter a replayed task comes from.
REPLAY_OF_HEADER = "x-dead-letter-replay-of"
#: Countdown before a record that could not be written is tried again from the record task.
DEFERRED_RECORD_COUNTDOWN_SECONDS = 5


def dead_letter_record(failure: Failure) -> DeadLetter:
    """Insert the entry, or update the one already recorded for the same message. Raises DatabaseError."""
    failed_at = datetime.fromisoformat(failure.failed_at)
    for _ in range(2):  # a concurrent insert of the same key turns into an update on the second pass
        try:
            with transaction.atomic():
                updated = DeadLetter.objects.filter(dedup_key=failure.dedup_key).update(
                    last_failed_at=Greatest("last_failed_at", failed_at),
                    failure_count=F("failure_count") + 1,
                    delivery_count=Greatest("delivery_count", failure.delivery_count),
                )
                if updated:
                    return DeadLetter.objects.get(dedup_key=failure.dedup_key)
                return DeadLetter.objects.create(
                    dedup_key=failure.dedup_key,
                    fingerprint=failure.fingerprint,
                    trace_id=failure.trace_id,
                    first_failed_at=failed_at,
                    last_failed_at=failed_at,
                    **{k: v for k, v in failure.to_json().items() if k != "failed_at"},
                )
        except IntegrityError:
            continue
    raise IntegrityError(f"could not record dead letter {failure.dedup_key}")


def dead_letter_record_safely(failure: Failure) -> DeadLetter | None:
    """Record ``failure``; if Postgres is down, defer it to the record task. Returns the entry, or None
    when deferred. Raises only when neither Postgres nor the broker could take it (do not acknowledge)."""
    try:
        close_old_connections()  # the worker's main process keeps its connection across failures
        entry = dead_letter_record(failure)
    except django_db.Error as exc:
        log.error("dead_letter.deferred", task_id=failure.task_id, reason=failure.reason, error=str(exc))
        try:
            # Routed (settings: the dead-letter queue), not to the failed message's own queue: that one may be a
            # bulk queue with minutes of backlog; the dead-letter queue's worker always has a process free.
            current_app.send_task(
                "observability.record_dead_letter",
                args=[failure.to_json()],
                countdown=DEFERRED_RECORD_COUNTDOWN_SECONDS,
                retry=False,
                # Nothing reads its result: no subscription to the result backend, which may be down too.
                ignore_result=True,
            )
        except (BrokerOperationalError, OSError) as broker_exc:
            log.critical("dead_letter.unrecorded", task_id=failure.task_id, error=str(broker_exc))
            raise
        sentry.report_dead_letter(failure, None)  # tagged "deferred": the entry has no id yet
        return None
    _announce(entry, failure, deferred=False)
    sentry.report_dead_letter(failure, entry.pk)
    return entry


def dead_letter_record_deferred(failure: Failure) -> DeadLetter:
    """Record a failure ``dead_letter_record_safely`` deferred while Postgres was down (the record task's
    body): logged and counted as any entry - Sentry heard of it when it was deferred. Raises DatabaseError."""
    entry = dead_letter_record(failure)
    _announce(entry, failure, deferred=True)
    return entry


def _announce(entry: DeadLetter, failure: Failure, *, deferred: bool) -> None:
    log.warning(
        "dead_letter.recorded",
        dead_letter_id=entry.pk,
        task_name=failure.task_name,
        task_id=failure.task_id,
        reason=failure.reason,
        exception_type=failure.exception_type,
        trace_id=failure.trace_id or None,
        deferred=deferred,
    )
    telemetry.dead_letter_created(failure.task_name, failure.reason)


def record_or_report(failure: Failure) -> bool:
    """``dead_letter_record_safely`` for the worker's main process, which must never crash on it: True when
    the failure is recorded or deferred, False (logged) when the caller must give the message back."""
    try:
        dead_letter_record_safely(failure)
    except Exception:  # last resort in the consumer's event loop: an escaping error would stop the worker
        log.exception("dead_letter.unrecorded", task_id=failure.task_id, reason=failure.reason)
        return False
    return True


@dataclass
class ReplayResult:
    #: (entry id, new task id) in publication order; a dry run assigns no task id (None).
    published: list[tuple[int, str | None]] = field(default_factory=list)
    #: The queue each published entry went (or, in a dry run, would go) to.
    queues: dict[int, str] = field(default_factory=dict)
    task_names: list[str] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)


class ReplayStoppedError(Exception):
    """A replay stopped partway - the broker failed, or the operator interrupted it (Ctrl-C): ``result`` holds
    what was published before, committed as replayed; the entry it stopped on and the rest stay pending. The
    cause is the ``__cause__``."""

    def __init__(self, result: ReplayResult, cause: BaseException) -> None:
        self.result = result
        self.interrupted = isinstance(cause, KeyboardInterrupt)
        published = len(result.published)
        if self.interrupted:
            message = f"Interrupted: published {published} task(s) before it stopped; the other entries stay pending"
        else:
            message = (
                f"The broker is unreachable ({cause}): published {published} task(s) before it failed; "
                "the other entries stay pending"
            )
        super().__init__(message)


def dead_letters_replay(
    entries: QuerySet[DeadLetter],
    *,
    operator: str,
    again: bool = False,
    queue: str | None = None,
    limit: int | None = None,
    rate: float | None = None,
    dry_run: bool = False,
    chunk_size: int = 200,
    on_progress: Callable[[int], object] | None = None,
) -> ReplayResult:
    """Publish the task of each entry again, under a new task id, and mark it replayed.

    Entries are taken in id order, ``chunk_size`` at a time under ``SELECT ... FOR UPDATE SKIP LOCKED``,
    and marked in the same transaction that publishes them, so two operators replaying at once never
    publish one entry twice. Only pending entries are taken unless ``again``; only registered tasks are
    published. ``rate`` caps publications per second. A crash between publishing and the commit leaves
    the entry pending: at worst published twice, never marked replayed without being published.

    Raises ``ReplayStoppedError`` when publishing an entry fails with a broker error or the operator interrupts the
    replay (KeyboardInterrupt), after committing what was published before: rolled back, those would stay
    pending and the next replay would publish them again.
    """
    registered = _registered_task_names()
    # Publishing also subscribes to the task's result on the result backend (Redis: the same server as the
    # broker, most often), whose connection may be the first to notice the server has gone.
    backend_errors = tuple(getattr(current_app.backend, "connection_errors", ()))
    statuses = [DeadLetterStatus.PENDING, DeadLetterStatus.REPLAYED] if again else [DeadLetterStatus.PENDING]
    candidates = entries.filter(status__in=statuses).order_by("id")
    result = ReplayResult()
    pacer = _TokenBucket(rate) if rate else None
    stopped_by: BaseException | None = None
    last_id = 0
    while stopped_by is None and (limit is None or len(result.published) < limit):
        with transaction.atomic():
            # No more rows locked than this replay may publish: a replay running alongside skips locked rows
            # for good, so rows locked here and left unpublished (past ``limit``) would be replayed by neither.
            size = chunk_size if limit is None else min(chunk_size, limit - len(result.published))
            chunk = list(candidates.filter(id__gt=last_id).select_for_update(skip_locked=True)[:size])
            if not chunk:
                break
            last_id = chunk[-1].pk
            replays: list[DeadLetterReplay] = []
            for entry in chunk:
                if limit is not None and len(result.published) >= limit:
                    break
                if entry.task_name not in registered:
                    result.skipped[entry.pk] = f"task {entry.task_name or '(none)'} is not registered"
                    continue
                new_id = None if dry_run else str(uuid.uuid4())
                try:
                    if pacer and not dry_run:  # a dry run only shows: nothing to pace
                        pacer.wait()  # where a throttled replay spends its time, Ctrl-C too
                    if new_id is not None:
                        replays.append(_publish(entry, new_id=new_id, queue=queue, operator=operator))
                except BaseException as exc:  # noqa: BLE001 - re-raised below, once what was published is committed
                    # kombu gave up reconnecting (every later entry would fail the same), the operator stops - or
                    # anything else: whatever stops the loop, the entries published before it are recorded
                    # (rolled back, they would stay pending and the next replay would publish them again).
                    stopped_by = exc
                    break
                result.published.append((entry.pk, new_id))
                result.queues[entry.pk] = _destination(entry, queue)
                result.task_names.append(entry.task_name)
                if on_progress:
                    on_progress(1)
            DeadLetterReplay.objects.bulk_create(replays)
            DeadLetter.objects.filter(pk__in=[r.dead_letter_id for r in replays]).update(
                status=DeadLetterStatus.REPLAYED
            )
    if dry_run:
        # Nothing was done, so nothing is logged as done.
        log.info("dead_letters.replay_planned", count=len(result.published), operator=operator)
    else:
        telemetry.dead_letters_replayed(result.task_names)
        for entry_id, new_id in result.published:
            log.info("dead_letter.replayed", dead_letter_id=entry_id, new_task_id=new_id, operator=operator)
    if stopped_by is not None:
        log.error("dead_letters.replay_stopped", published=len(result.published), error=repr(stopped_by))
        if not isinstance(stopped_by, (KombuError, RedisError, OSError, *backend_errors, KeyboardInterrupt)):
            raise stopped_by  # not the broker nor the operator: a defect, with its traceback
        raise ReplayStoppedError(result, stopped_by) from stopped_by
    return result


class _TokenBucket:
    """At most ``rate`` publications per second - a ceiling, not an average: a stall (a slow query, a busy
    machine, a slow broker) is not made up for afterwards. A token bucket: it starts with one token, refills at
    ``rate`` a second and holds at most ``max(1, rate * BURST_SECONDS)``, so after a pause at most that many
    go out at once; the small burst absorbs the sleep's own overshoot, keeping a fast rate (500/s) on target."""

    #: The burst allowed after a pause, in seconds of the rate: 50 publications at 500/s, one at 5/s.
    BURST_SECONDS = 0.1

    def __init__(
        self, rate: float, *, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], object] = time.sleep
    ) -> None:
        self._rate = rate
        self._capacity = max(1.0, rate * self.BURST_SECONDS)
        self._tokens = 1.0
        self._clock = clock
        self._sleep = sleep
        self._refilled_at: float | None = None

    def wait(self) -> None:
        """Return when the next publication may go out (at once for the first), and take its token."""
        self._refill()
        while self._tokens < 1 - 1e-9:  # not 1: a float shy of a token after the sleep meant for it
            self._sleep((1 - self._tokens) / self._rate)
            self._refill()
        self._tokens -= 1

    def _refill(self) -> None:
        now = self._clock()
        if self._refilled_at is not None:
            self._tokens = min(self._capacity, self._tokens + (now - self._refilled_at) * self._rate)
        self._refilled_at = now


def _registered_task_names() -> set[str]:
    """The tasks a worker of this project registers: the installed apps' ``tasks`` modules, the app's
    ``imports`` and ``include``. Not ``loader.import_default_modules()``: its Django fix-up runs every system
    check again (``manage.py`` ran them already), about 0.7 s of a 5,000-entry replay (py-spy)."""
    current_app.autodiscover_tasks(force=True)
    for module in current_app.loader.default_modules:
        current_app.loader.import_task_module(module)
    return set(current_app.tasks)


def _destination(entry: DeadLetter, queue: str | None) -> str:
    """The queue ``_publish`` sends ``entry`` to: ``queue``, else the entry's own, else where Celery's router
    sends its task (the default queue unless ``task_routes`` says otherwise)."""
    return queue or entry.queue or current_app.amqp.router.route({}, entry.task_name)["queue"].name


def _publish(entry: DeadLetter, *, new_id: str, queue: str | None, operator: str) -> DeadLetterReplay:
    headers = {k: v for k, v in entry.headers.items() if k not in PROTOCOL_HEADERS}
    headers[REPLAY_OF_HEADER] = entry.pk
    if entry.headers.get("traceparent"):
        headers[telemetry.REPLAY_TRACEPARENT_HEADER] = entry.headers["traceparent"]
    target_queue = queue or entry.queue or None
    current_app.send_task(
        entry.task_name,
        args=entry.args,
        kwargs=entry.kwargs,
        task_id=new_id,
        headers=headers,
        queue=target_queue,
        routing_key=None if queue else (entry.routing_key or None),
        exchange=None if queue else (entry.exchange or None),
    )
    return DeadLetterReplay(
        dead_letter=entry, new_task_id=new_id, queue=target_queue or "", operator=operator, replayed_at=timezone.now()
    )


def dead_letters_discard(entries: QuerySet[DeadLetter], *, operator: str) -> int:
    """Mark pending entries discarded (kept for the record, never replayed by ``--all``)."""
    count = entries.filter(status=DeadLetterStatus.PENDING).update(status=DeadLetterStatus.DISCARDED)
    log.info("dead_letters.discarded", count=count, operator=operator)
    return count


def dead_letters_purge(entries: QuerySet[DeadLetter], *, reason: str) -> dict[str, int]:
    """Delete ``entries``; returns the counts by status of what was deleted and logs them (never silent)."""
    with transaction.atomic():
        # One locked set: the counts logged are exactly the rows deleted, whatever runs alongside.
        rows = list(entries.select_for_update().values_list("id", "status"))
        counts = dict(Counter(status for _, status in rows))
        DeadLetter.objects.filter(id__in=[pk for pk, _ in rows]).delete()
    telemetry.dead_letters_purged(counts)
    log.warning("dead_letters.purged", reason=reason, total=sum(counts.values()), **counts)
    return counts
