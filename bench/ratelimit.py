"""The channel rate limiter as the provider sees it: a backlog of email notifications delivered by 4 worker
processes (two workers of 2) through a local SMTP server that stamps each message's arrival, under
``NOTIFICATION_RATE_LIMIT_PER_SECOND``. Reports the most arrivals in any 1 s window (sliding) against the limit,
and the share of the limit used while the backlog waits.
"""

from __future__ import annotations

import argparse
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from email import message_from_bytes
from typing import Any

from aiosmtpd.controller import Controller
from django.db import connection
from django.utils import timezone

from bench.domain import reset_promotions
from bench.harness import Sink, Worker, base_env, wait_until
from bench.report import Row
from bench.throughput import broker, ping

#: Notifications per batch task: 4 processes each have batches to run while the backlog waits.
BATCH = 100


class _Recorder:
    """aiosmtpd handler: the arrival time and idempotency key of every message."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrivals: list[float] = []
        self.keys: Counter[str] = Counter()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd API
        key = str(message_from_bytes(envelope.content)["X-Idempotency-Key"])
        with self.lock:
            self.arrivals.append(time.time())
            self.keys[key] += 1
        return "250 OK"


@dataclass
class RateLimitRun:
    limit: float
    burst: int
    notifications: int
    processes: int
    seconds: float
    max_per_window: int
    #: Arrivals per second over the full seconds of the run / the limit.
    share_used: float
    #: The emptiest full second of the run / the limit.
    min_second_share: float
    sent_once: int
    sent_twice: int


def _max_per_window(times: list[float]) -> int:
    best, start = 0, 0
    for end, at in enumerate(times):
        while times[start] <= at - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def _backlog(count: int) -> None:
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO promotions_product (name, price, created_at) VALUES ('bench', 10, now())")
        cursor.execute(
            "INSERT INTO promotions_subscription (product_id, email, created_at, confirmed_at) "
            "SELECT 1, 'user' || g || '@bench.example', now(), now() FROM generate_series(1, %(n)s) g",
            {"n": count},
        )
        cursor.execute(
            "INSERT INTO promotions_flashpromo (product_id, title, discount_percent, starts_at, ends_at, status, "
            "activated_at, activation_enqueued, end_enqueued, notifications_queued, created_at) VALUES "
            "(1, 'bench', 20, %(now)s, %(now)s + interval '1 hour', 'active', %(now)s, true, false, true, %(now)s)",
            {"now": now},
        )
        cursor.execute(
            "INSERT INTO promotions_notification (promo_id, subscription_id, channel, status, attempts, "
            "next_attempt_at, last_error, idempotency_key, created_at) "
            "SELECT 1, s.id, 'email', 'pending', 0, %(now)s, '', gen_random_uuid(), %(now)s "
            "FROM promotions_subscription s",
            {"now": now},
        )
        cursor.execute("ANALYZE promotions_notification")


def _sent() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM promotions_notification WHERE status = 'sent'")
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def rate_limited_delivery(count: int, limit: float) -> RateLimitRun:
    from promotions.tasks import deliver_notification_batch

    reset_promotions()
    broker().flushdb()  # no bucket or pause left by an earlier run
    _backlog(count)
    recorder = _Recorder()
    with socket.socket() as probe:  # a free port for the SMTP server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    burst = int(os.environ.get("NOTIFICATION_RATE_LIMIT_BURST") or max(1, int(limit * 0.05)))  # else the default
    env = {
        **base_env(),
        "NOTIFICATION_BACKEND": "email",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(port),
        "NOTIFICATION_RATE_LIMIT_PER_SECOND": str(limit),
        "NOTIFICATION_BATCH_SIZE": str(BATCH),
    }
    workers = [Worker(env, f"ratelimit-{n}", concurrency=2) for n in range(2)]
    try:
        for worker in workers:
            ping(worker)
        for _ in range(-(-count // BATCH)):
            deliver_notification_batch.delay()
        wait_until(lambda: _sent() >= count, timeout=max(120, 3 * count / limit), interval=0.2, what="all sent")
    finally:
        for worker in workers:
            worker.stop()
        controller.stop()
    arrivals = sorted(recorder.arrivals)
    span = arrivals[-1] - arrivals[0]
    seconds = [0] * int(span)  # full seconds only: the last, partial one is not a backlog waiting
    for at in arrivals:
        index = int(at - arrivals[0])
        if index < len(seconds):
            seconds[index] += 1
    return RateLimitRun(
        limit=limit,
        burst=burst,
        notifications=count,
        processes=4,
        seconds=round(span, 2),
        max_per_window=_max_per_window(arrivals),
        share_used=round(sum(seconds) / len(seconds) / limit, 4) if seconds else 0.0,
        min_second_share=round(min(seconds) / limit, 4) if seconds else 0.0,
        sent_once=sum(1 for n in recorder.keys.values() if n == 1),
        sent_twice=sum(1 for n in recorder.keys.values() if n > 1),
    )


def bench_ratelimit(args: argparse.Namespace, sink: Sink, rows: list[Row], out: dict[str, Any]) -> None:
    run = rate_limited_delivery(args.ratelimit_notifications, args.ratelimit_rate)
    out["ratelimit"] = asdict(run)
    over = run.max_per_window / run.limit - 1
    rows += [
        Row(
            f"9. rate limit {run.limit:.0f}/s, {run.processes} processes: most arrivals in any 1 s window",
            f"{run.max_per_window} ({over:+.1%}; burst {run.burst})",
            "<= limit + 5%",
            run.max_per_window <= run.limit * 1.05 + 1e-9,  # 105 at 100/s is +5.0%, within (float: 0.05000...04)
        ),
        Row(
            f"9. share of the limit used while {run.notifications:,} wait (emptiest second)",
            f"{run.share_used:.1%} ({run.min_second_share:.1%}) over {run.seconds:.1f} s",
            ">= 95%",
            run.share_used >= 0.95,
        ),
        Row(
            "9. none sent twice",
            f"once {run.sent_once:,}, twice {run.sent_twice}",
            "all once",
            run.sent_once == run.notifications and run.sent_twice == 0,
        ),
    ]
