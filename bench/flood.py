"""Promos of other products going live during a delivery flood: the workers as the Procfile deploys them (a
worker per queue group) against one shared worker (``--concurrency=2``, no ``-Q``: the deployment before).

One promo with ``flood`` subscribers goes live first; its notifications go through a local SMTP server that
takes ``delay_ms`` per message (a slow provider). Meanwhile ``promos`` promos of other products start, spread
over ``spread`` seconds: their activation lag (``activated_at - starts_at``) is what the routing protects.
Also measured: how long the flood took to deliver (first activation to last ``sent_at``) and that no message
reached the provider twice (the server counts ``X-Idempotency-Key``).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import timedelta
from email import message_from_bytes
from typing import Any

from aiosmtpd.controller import Controller
from django.utils import timezone

from bench.domain import _execute, _scalar, reset_promotions
from bench.harness import LOGS, ROOT, Sink, instrumented_env, percentile, wait_until
from bench.report import Row
from bench.throughput import broker

#: Today's deployment before queues were split: the Procfile's one worker.
SHARED_WORKER = "celery -A marketplace worker --concurrency=2"


class SlowProvider:
    """A local SMTP server that answers each message after ``delay`` seconds and counts idempotency keys."""

    def __init__(self, delay: float) -> None:
        self.keys: Counter[str] = Counter()
        self._lock = threading.Lock()
        provider = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd API
                key = str(message_from_bytes(envelope.content)["X-Idempotency-Key"])
                with provider._lock:
                    provider.keys[key] += 1
                await asyncio.sleep(delay)
                return "250 OK"

        with socket.socket() as probe:  # a free port: aiosmtpd's controller needs one named
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()


def procfile_workers() -> list[str]:
    """The ``celery ... worker`` commands of the Procfile, as ``make run`` starts them."""
    lines = (ROOT / "Procfile").read_text().splitlines()
    return [line.split(":", 1)[1].strip() for line in lines if " worker " in line.split(":", 1)[-1]]


def _start(command: str, env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
    argv = [a for a in shlex.split(command) if not a.startswith("--loglevel")]
    assert argv[0] == "celery", command
    LOGS.mkdir(parents=True, exist_ok=True)
    with (LOGS / f"{log_name}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", *argv, "--loglevel=WARNING", "--without-mingle", "--without-gossip"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class FloodRun:
    deployment: str
    workers: list[str]
    flood: int
    promos: int
    spread_seconds: float
    delay_ms: float
    #: Other promos that started while the flood was still being delivered.
    during_flood: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    flood_seconds: float
    sent: int
    max_per_key: int
    #: The machine's 1-minute load average at the end of the run: other work on the two cores shows here.
    load_average: float


def _insert(flood: int, promos: int, spread: float) -> None:
    """Product 1 with ``flood`` subscribers, a promo of it starting in 3 s; ``promos`` promos of products 2..
    (one subscriber each) starting from 4 s on, ``spread`` seconds apart in all."""
    _execute(
        "INSERT INTO promotions_product (name, price, created_at) "
        "SELECT 'flood product ' || g, 10, now() FROM generate_series(1, %(n)s) g",
        {"n": promos + 1},
    )
    _execute(
        "INSERT INTO promotions_subscription (product_id, email, created_at, confirmed_at) "
        "SELECT 1, 'user' || g || '@bench.example', now(), now() FROM generate_series(1, %(n)s) g",
        {"n": flood},
    )
    _execute(
        "INSERT INTO promotions_subscription (product_id, email, created_at, confirmed_at) "
        "SELECT p.id, 'other' || p.id || '@bench.example', now(), now() FROM promotions_product p WHERE p.id > 1"
    )
    now = timezone.now()
    _execute(
        """
        INSERT INTO promotions_flashpromo (product_id, title, discount_percent, starts_at, ends_at, status,
                                           activation_enqueued, end_enqueued, created_at)
        SELECT 1 + g, 'flood ' || g, 20,
               CASE WHEN g = 0 THEN %(flood_at)s ELSE %(first)s + (g - 1) * %(step)s * interval '1 second' END,
               %(now)s + interval '1 hour', 'scheduled', false, false, %(now)s
          FROM generate_series(0, %(n)s) g
        """,
        {
            "flood_at": now + timedelta(seconds=3),
            "first": now + timedelta(seconds=4),
            "step": spread / max(1, promos - 1),
            "now": now,
            "n": promos,
        },
    )


def flood_run(deployment: str, *, flood: int, promos: int, spread: float, delay_ms: float, sink: Sink) -> FloodRun:
    """One run: ``deployment`` is ``routed`` (the Procfile's workers) or ``shared`` (one worker, every queue)."""
    from promotions.tasks import check_active_promos

    reset_promotions()
    broker().flushdb()
    provider = SlowProvider(delay_ms / 1000)
    env = {
        **instrumented_env(sink), "LOG_LEVEL": "WARNING", "NOTIFICATION_BACKEND": "email",
        "EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": str(provider.port),
    }  # fmt: skip
    commands = procfile_workers() if deployment == "routed" else [SHARED_WORKER]
    workers = [_start(command, env, f"flood-{deployment}-{n}") for n, command in enumerate(commands)]
    try:
        from marketplace.celery import app

        wait_until(
            lambda: len(app.control.ping(timeout=0.5) or []) >= len(workers), timeout=120, what="every worker answering"
        )
        _insert(flood, promos, spread)
        check_active_promos.delay()  # one sweep publishes every countdown (all start within the horizon)
        total = flood + promos
        wait_until(
            lambda: _scalar("SELECT count(*) FROM promotions_notification WHERE status = 'sent'") >= total,
            timeout=900,
            interval=0.2,
            what="every notification sent",
        )
    finally:
        _stop(workers)
        provider.stop()
    flood_started = _scalar("SELECT activated_at FROM promotions_flashpromo WHERE product_id = 1")
    flood_done = _scalar("SELECT max(sent_at) FROM promotions_notification n JOIN promotions_flashpromo p "
                         "ON p.id = n.promo_id WHERE p.product_id = 1")  # fmt: skip
    lags = [
        float(ms)
        for (ms,) in _rows(
            "SELECT EXTRACT(EPOCH FROM activated_at - starts_at) * 1000 FROM promotions_flashpromo WHERE product_id > 1"
        )
    ]
    during = int(
        _scalar(
            "SELECT count(*) FROM promotions_flashpromo WHERE product_id > 1 AND starts_at < %(done)s",
            {"done": flood_done},
        )
    )
    sent = int(_scalar("SELECT count(*) FROM promotions_notification WHERE status = 'sent'"))
    return FloodRun(
        deployment, commands, flood, promos, spread, delay_ms, during, percentile(lags, 50), percentile(lags, 99),
        max(lags), (flood_done - flood_started).total_seconds(), sent, max(provider.keys.values()), os.getloadavg()[0],
    )  # fmt: skip


def _rows(sql: str) -> list[tuple[Any, ...]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql)
        return list(cursor.fetchall())


def bench(args: Any, sink: Sink, rows: list[Row], out: dict[str, Any]) -> None:
    """The section of ``bench.run``: the shared worker, then the routed workers, in the same run."""
    runs = {}
    for deployment in ("shared", "routed"):
        run = flood_run(
            deployment, flood=args.flood, promos=args.flood_promos, spread=args.flood_spread,
            delay_ms=args.smtp_delay_ms, sink=sink,
        )  # fmt: skip
        runs[deployment] = run
        print(f"  {deployment}: lag p50 {run.p50_ms:.0f} ms p99 {run.p99_ms:.0f} ms, flood {run.flood_seconds:.1f} s")
    out["flood"] = {name: asdict(run) for name, run in runs.items()}
    shared, routed = runs["shared"], runs["routed"]
    for name, run in runs.items():
        label = "routed workers (Procfile)" if name == "routed" else "one shared worker, --concurrency=2"
        rows.append(
            Row(
                f"9. lag of promos during a {run.flood:,}-message flood, {label} ({run.during_flood}/{run.promos})",
                f"p50 {run.p50_ms:.0f} ms, p99 {run.p99_ms:.0f} ms, max {run.max_ms:.0f}; load {run.load_average:.0f}",
                "p99 <= 1 s" if name == "routed" else "",
                run.p99_ms <= 1000 if name == "routed" else None,
            )
        )
    rows.append(
        Row(
            f"9. flood delivered ({args.smtp_delay_ms:.0f} ms/message): routed vs shared",
            f"{routed.flood_seconds:.1f} s vs {shared.flood_seconds:.1f} s",
            "no slower",
            routed.flood_seconds <= shared.flood_seconds,
        )
    )
    once = all(r.sent == r.flood + r.promos and r.max_per_key == 1 for r in runs.values())
    rows.append(
        Row("9. none sent twice", ", ".join(f"{n} {r.sent:,} sent, max {r.max_per_key}/key" for n, r in runs.items()),
            "all sent once", once)
    )  # fmt: skip
