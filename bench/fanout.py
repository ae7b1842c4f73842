"""The fan-out of one big promo end to end: subscribers made server-side (``generate_series``), a real worker of 2
processes activating the promo, fanning it out in keyset batches and delivering through the no-op channel.

Figures: time from activation to the first delivery, the longest fan-out batch transaction (which contains
the only lock the fan-out takes on the promo's row), when the walk finished, and deliveries per second.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from django.db import connection
from django.utils import timezone

from bench.domain import _execute, reset_promotions, wait_all_sent
from bench.harness import Sink, Worker, instrumented_env
from bench.throughput import broker, ping

#: How often the side connection looks for held fan-out batch locks: the longest batch is known to this much.
SAMPLE_SECONDS = 0.005


@dataclass
class FanOutRun:
    subscribers: int
    batch_size: int
    first_delivery_seconds: float
    walk_seconds: float
    last_delivery_seconds: float
    #: Subscribers over activation-to-last-delivery: fan-out and deliveries sharing the 2 processes.
    overall_per_second: float
    #: Subscribers over first-to-last delivery.
    deliveries_per_second: float
    longest_batch_ms: float
    batches_sampled: int
    sent: int
    max_attempts: int


class _LockSampler:
    """Polls ``pg_locks`` from its own connection for the fan-out's batch locks (transaction-level advisory
    locks) and keeps, per holding transaction, the longest it was seen held."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.held: dict[tuple[int, str], float] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _LockSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        from promotions.fanout import FAN_OUT_LOCK_SPACE

        try:
            with connection.cursor() as cursor:
                while not self._stop.is_set():
                    cursor.execute(
                        """
                        SELECT l.pid, a.xact_start::text, EXTRACT(EPOCH FROM clock_timestamp() - a.xact_start)
                          FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                         WHERE l.locktype = 'advisory' AND l.classid = %(space)s AND l.granted
                           AND a.xact_start IS NOT NULL
                        """,
                        {"space": FAN_OUT_LOCK_SPACE},
                    )
                    for pid, started, seconds in cursor.fetchall():
                        key = (pid, started)
                        self.held[key] = max(self.held.get(key, 0.0), float(seconds))
                    time.sleep(SAMPLE_SECONDS)
        finally:
            connection.close()


def fan_out_at_scale(subscribers: int, sink: Sink, batch_size: int | None = None) -> FanOutRun:
    """One promo of ``subscribers`` subscribers goes live through the sweep task; wait until every one is sent."""
    from django.conf import settings

    from promotions.tasks import check_active_promos

    reset_promotions()
    broker().flushdb()
    _execute("INSERT INTO promotions_product (name, price, created_at) VALUES ('bench fan-out', 10, now())")
    _execute(
        "INSERT INTO promotions_subscription (product_id, email, created_at, confirmed_at) "
        "SELECT 1, 'user' || g || '@bench.example', now(), now() FROM generate_series(1, %(n)s) g",
        {"n": subscribers},
    )
    _execute("VACUUM ANALYZE promotions_subscription")
    size = batch_size or settings.NOTIFICATION_FAN_OUT_BATCH_SIZE
    env = {
        **instrumented_env(sink),
        "LOG_LEVEL": "WARNING",
        "NOTIFICATION_BACKEND": "console",
        "NOTIFICATION_FAN_OUT_BATCH_SIZE": str(size),
    }
    worker = Worker(env, "fanout", loglevel="WARNING")
    try:
        ping(worker)
        _execute(
            "INSERT INTO promotions_flashpromo (product_id, title, discount_percent, starts_at, ends_at, status, "
            "activation_enqueued, end_enqueued, created_at) "
            "VALUES (1, 'bench fan-out', 20, %(now)s, %(now)s + interval '1 hour', 'scheduled', false, false, now())",
            {"now": timezone.now()},
        )
        with _LockSampler() as sampler:
            check_active_promos.delay()
            wait_all_sent(subscribers, timeout=1800, interval=0.5)
    finally:
        worker.stop()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT EXTRACT(EPOCH FROM min(n.sent_at) - p.activated_at),
                   EXTRACT(EPOCH FROM p.fan_out_at - p.activated_at),
                   EXTRACT(EPOCH FROM max(n.sent_at) - p.activated_at),
                   EXTRACT(EPOCH FROM max(n.sent_at) - min(n.sent_at)),
                   count(*) FILTER (WHERE n.status = 'sent'), max(n.attempts)
              FROM promotions_flashpromo p JOIN promotions_notification n ON n.promo_id = p.id
             GROUP BY p.id
            """
        )
        first, walk, last, sending, sent, attempts = cursor.fetchone()
    longest = max(sampler.held.values(), default=0.0)
    return FanOutRun(
        subscribers,
        size,
        float(first),
        float(walk),
        float(last),
        subscribers / float(last),
        subscribers / float(sending),
        longest * 1000,
        len(sampler.held),
        int(sent),
        int(attempts),
    )
