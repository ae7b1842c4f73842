"""Domain benchmarks on the bench database: the promo sweep at scale, notification delivery, promo
activation lag and dead-letter operations. Rows are made with set-based SQL (``generate_series``).
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from bench.harness import Sink, Worker, instrumented_env, percentile, wait_until
from bench.throughput import broker, ping

#: Subscribers per product: every activated promo fans out to this many notifications.
SUBSCRIBERS_PER_PRODUCT = 5
PRODUCTS = 100


def _execute(sql: str, params: dict[str, Any] | None = None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _scalar(sql: str, params: dict[str, Any] | None = None) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return row[0] if row else None


def wait_all_sent(count: int, *, timeout: float, interval: float) -> float:
    """Poll until ``count`` notifications are sent; returns the ``perf_counter`` time it was seen."""
    return wait_until(
        lambda: _scalar("SELECT count(*) FROM promotions_notification WHERE status = 'sent'") >= count,
        timeout=timeout,
        interval=interval,
        what="every notification sent",
    )


def reset_promotions() -> None:
    _execute(
        "TRUNCATE promotions_notification, promotions_flashpromo, promotions_subscription, promotions_product "
        "RESTART IDENTITY CASCADE"
    )


def _products(subscribers: int) -> None:
    _execute(
        "INSERT INTO promotions_product (name, price, created_at) "
        "SELECT 'bench product ' || g, 10, now() FROM generate_series(1, %(n)s) g",
        {"n": PRODUCTS},
    )
    _execute(
        "INSERT INTO promotions_subscription (product_id, email, created_at, confirmed_at) "
        "SELECT p.id, 'user' || g || '@bench.example', now(), now() "
        "FROM promotions_product p, generate_series(1, %(n)s) g",
        {"n": subscribers},
    )


def _insert_promos(*, total: int, due: int, now: datetime) -> None:
    """``due`` promos started a minute ago; the others start tomorrow, one second apart."""
    _execute(
        """
        INSERT INTO promotions_flashpromo (product_id, title, discount_percent, starts_at, ends_at, status,
                                           activation_enqueued, end_enqueued, created_at)
        SELECT 1 + g %% %(products)s, 'bench promo ' || g, 20,
               CASE WHEN g <= %(due)s THEN %(now)s - interval '1 minute'
                    ELSE %(now)s + interval '1 day' + g * interval '1 second' END,
               CASE WHEN g <= %(due)s THEN %(now)s + interval '1 hour'
                    ELSE %(now)s + interval '2 days' + g * interval '1 second' END,
               'scheduled', false, false, %(now)s
          FROM generate_series(1, %(total)s) g
        """,
        {"products": PRODUCTS, "due": due, "now": now, "total": total},
    )
    _execute("ANALYZE promotions_flashpromo")


@dataclass
class SweepRun:
    promos: int
    due: int
    seconds: list[float]
    statements: list[int]
    activated: int
    notifications_queued: int
    #: Queueing the activated promos' notifications, in FAN_OUT_CHUNK chunks one after the other (workers
    #: run the chunks side by side; this is the total work, not the wall time with two workers).
    fan_out_seconds: list[float]
    sql: list[str]


def sweep_at_scale(total: int, repeats: int, due_percent: float = 1.0) -> SweepRun:
    """Time ``promos_sync_state`` over ``total`` promos of which ``due_percent`` are due and count its SQL
    statements; then time the fan-out of the activated promos' notifications."""
    from promotions import fanout, services
    from promotions.tasks import FAN_OUT_CHUNK

    reset_promotions()
    _products(SUBSCRIBERS_PER_PRODUCT)
    now = timezone.now()
    due = max(1, round(total * due_percent / 100))
    _insert_promos(total=total, due=due, now=now)
    seconds, statements, fan_out_seconds = [], [], []
    activated = queued = 0
    sql: list[str] = []
    for _ in range(repeats):
        _execute("TRUNCATE promotions_notification")
        _execute(
            "UPDATE promotions_flashpromo SET status = 'scheduled', activated_at = NULL, notifications_queued = FALSE,"
            " fan_out_cursor = 0, fan_out_at = NULL WHERE id <= %(due)s",
            {"due": due},
        )
        _execute("VACUUM ANALYZE promotions_flashpromo")
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            result = services.promos_sync_state(now=timezone.now())
            seconds.append(time.perf_counter() - started)
        statements.append(len(queries.captured_queries))
        sql = [f"{q['time']} s: " + " ".join(q["sql"].split())[:80] for q in queries.captured_queries]
        activated, queued = len(result.activated), 0
        started = time.perf_counter()
        for i in range(0, activated, FAN_OUT_CHUNK):
            chunk = result.activated[i : i + FAN_OUT_CHUNK]
            run = fanout.promos_fan_out(promo_ids=chunk, now=timezone.now(), on_batch=id, budget_seconds=3600)
            queued += run.queued
        fan_out_seconds.append(time.perf_counter() - started)
    return SweepRun(total, due, seconds, statements, activated, queued, fan_out_seconds, sql)


@dataclass
class DeliveryRun:
    notifications: int
    batches: int
    seconds: float
    per_second: float
    sent: int
    max_attempts: int
    not_sent: int


def notification_delivery(count: int, sink: Sink) -> DeliveryRun:
    """``count`` pending notifications of one active promo, ceil(count/500) batch tasks, 2 worker processes
    (telemetry and Sentry on, logs at WARNING so the console channel's lines are filtered)."""
    from promotions.tasks import deliver_notification_batch

    reset_promotions()
    broker().flushdb()
    _products(0)
    _execute(
        "INSERT INTO promotions_subscription (product_id, email, created_at, confirmed_at) "
        "SELECT 1, 'user' || g || '@bench.example', now(), now() FROM generate_series(1, %(n)s) g",
        {"n": count},
    )
    now = timezone.now()
    _execute(
        "INSERT INTO promotions_flashpromo (product_id, title, discount_percent, starts_at, ends_at, status, "
        "activated_at, activation_enqueued, end_enqueued, created_at) "
        "VALUES (1, 'bench', 20, %(now)s, %(now)s + interval '1 hour', 'active', %(now)s, true, false, %(now)s)",
        {"now": now},
    )
    _execute(
        "INSERT INTO promotions_notification (promo_id, subscription_id, channel, status, attempts, "
        "next_attempt_at, last_error, idempotency_key, created_at) "
        "SELECT 1, s.id, 'email', 'pending', 0, %(now)s, '', gen_random_uuid(), %(now)s "
        "FROM promotions_subscription s",
        {"now": now},
    )
    _execute("ANALYZE promotions_notification")
    env = {**instrumented_env(sink), "LOG_LEVEL": "WARNING", "NOTIFICATION_BACKEND": "console"}
    worker = Worker(env, "notifications", loglevel="WARNING")
    batches = math.ceil(count / 500)
    try:
        ping(worker)
        started = time.perf_counter()
        for _ in range(batches):
            deliver_notification_batch.delay()
        done = wait_all_sent(count, timeout=900, interval=0.05)
    finally:
        worker.stop()
    sent = int(_scalar("SELECT count(*) FROM promotions_notification WHERE status = 'sent'"))
    max_attempts = int(_scalar("SELECT max(attempts) FROM promotions_notification"))
    not_sent = int(_scalar("SELECT count(*) FROM promotions_notification WHERE status <> 'sent'"))
    seconds = done - started
    return DeliveryRun(count, batches, seconds, count / seconds, sent, max_attempts, not_sent)


@dataclass
class LagRun:
    promos: int
    spread_seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    activated: int


def activation_lag(count: int, spread: float, sink: Sink) -> LagRun:
    """``count`` promos starting over ``spread`` seconds; one sweep publishes their countdown tasks."""
    from promotions.tasks import check_active_promos

    reset_promotions()
    broker().flushdb()
    _products(SUBSCRIBERS_PER_PRODUCT)
    env = {**instrumented_env(sink), "LOG_LEVEL": "WARNING", "NOTIFICATION_BACKEND": "console"}
    worker = Worker(env, "activation-lag", loglevel="WARNING")
    try:
        ping(worker)
        first = timezone.now() + timedelta(seconds=3)
        _execute(
            """
            INSERT INTO promotions_flashpromo (product_id, title, discount_percent, starts_at, ends_at, status,
                                               activation_enqueued, end_enqueued, created_at)
            SELECT 1 + g %% %(products)s, 'lag ' || g, 20, %(first)s + g * %(step)s * interval '1 second',
                   %(first)s + interval '1 hour', 'scheduled', false, false, now()
              FROM generate_series(0, %(n)s - 1) g
            """,
            {"products": PRODUCTS, "first": first, "step": spread / count, "n": count},
        )
        check_active_promos.delay()
        wait_until(
            lambda: _scalar("SELECT count(*) FROM promotions_flashpromo WHERE status = 'active'") >= count,
            timeout=spread + 60,
            interval=0.2,
            what="every promo active",
        )
    finally:
        worker.stop()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXTRACT(EPOCH FROM activated_at - starts_at) * 1000 FROM promotions_flashpromo "
            "WHERE activated_at IS NOT NULL"
        )
        lags = [float(row[0]) for row in cursor.fetchall()]
    return LagRun(count, spread, percentile(lags, 50), percentile(lags, 99), max(lags), len(lags))


@dataclass
class DeadLetterRun:
    record_ms: list[float]
    entries: int
    list_ms: list[float]
    replay_entries: int
    replay_per_second: float
    rate_asked: float
    rate_entries: int
    rate_measured: float


def dead_letters(entries: int, record_samples: int, replay_count: int, rate: float, rate_count: int) -> DeadLetterRun:
    """Record cost, filtered listing over ``entries`` rows, unthrottled and paced replay (to a queue nobody
    consumes)."""
    from observability.deadletters.services import dead_letter_record
    from observability.failure import Failure

    _execute("TRUNCATE observability_deadletterreplay, observability_deadletter RESTART IDENTITY CASCADE")
    broker().flushdb()
    record_ms = []
    for index in range(record_samples):
        failure = Failure(
            reason="non_retryable_error",
            task_name="bench.observable_noop",
            task_id=f"bench-record-{index}",
            args=[1],
            headers={"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"},
            queue="celery",
            routing_key="celery",
            exception_type="ValueError",
            exception_message="bench",
            traceback="Traceback (most recent call last):\n  ...\nValueError: bench\n",
        )
        started = time.perf_counter()
        dead_letter_record(failure)
        record_ms.append((time.perf_counter() - started) * 1000)
    # The bulk: five task names x four reasons, failures spread over the last week.
    _execute(
        """
        INSERT INTO observability_deadletter (dedup_key, reason, status, task_name, task_id, args, kwargs, headers,
               queue, exchange, routing_key, raw_message, retries, delivery_count, failure_count, exception_type,
               exception_message, traceback, worker_host, trace_id, fingerprint, first_failed_at, last_failed_at)
        SELECT 'bulk-' || g,
               (ARRAY['max_retries_exceeded', 'non_retryable_error', 'time_limit_exceeded',
                      'poison_message'])[1 + g %% 4],
               'pending',
               CASE WHEN g %% 5 = 0 THEN 'bench.observable_noop' ELSE 'promotions.tasks.task_' || (g %% 5) END,
               'bulk-' || g, '[]'::jsonb, '{}'::jsonb, '{}'::jsonb, 'celery', '', 'celery', '', 0, 1, 1,
               'ValueError', 'bench', 'Traceback ...', 'bench', '', 'f' || (g %% 5),
               now() - (g %% 10080) * interval '1 minute', now() - (g %% 10080) * interval '1 minute'
          FROM generate_series(1, %(n)s) g
        """,
        {"n": max(0, entries - record_samples)},
    )
    _execute("ANALYZE observability_deadletter")
    reasons = _scalar("SELECT array_agg(DISTINCT reason) FROM observability_deadletter")
    if "non_retryable_error" not in reasons:
        raise RuntimeError(f"unexpected dead-letter reasons in the schema: {reasons}")
    list_ms = []
    for _ in range(5):
        started = time.perf_counter()
        call_command(
            "dlq", "list", "--task", "bench.observable_noop", "--reason", "non_retryable_error", "--limit", "50",
            stdout=io.StringIO(),
        )  # fmt: skip
        list_ms.append((time.perf_counter() - started) * 1000)
    replay = _timed_replay(["--task", "bench.observable_noop", "--limit", str(replay_count)])
    paced = _timed_replay(["--task", "bench.observable_noop", "--limit", str(rate_count), "--rate", str(rate)])
    return DeadLetterRun(
        record_ms, entries, list_ms, replay_count, replay_count / replay, rate, rate_count, rate_count / paced
    )


def _timed_replay(arguments: list[str]) -> float:
    started = time.perf_counter()
    call_command(
        "dlq", "replay", *arguments, "--queue", "bench-void", "--operator", "bench", stdout=io.StringIO(),
        stderr=io.StringIO(),
    )  # fmt: skip
    return time.perf_counter() - started
