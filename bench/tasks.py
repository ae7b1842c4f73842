"""Bench tasks, loaded by bench workers with ``--include=bench.tasks``: no-op tasks doing one Redis call.

``bare_noop`` is a plain ``celery.Task`` (no ObservableTask hook runs for it); ``observable_noop`` uses the
app's default base, ``ObservableTask``. Both ignore results so the only Redis call is the task's own.
``bare_pass`` and ``observable_pass`` are the same pair doing nothing at all (``bench.child_path``).
A worker started with ``bench.contrib.CONTRIB_ENV`` set runs its children under the contrib instrumentation.
"""

from __future__ import annotations

import os
import time

import celery
import redis
from celery import signals
from django.conf import settings

from bench import contrib
from marketplace.celery import app

__all__ = ["COUNTER_KEY", "LATENCY_KEY", "bare_noop", "bare_pass", "observable_noop", "observable_pass"]

#: Incremented once per run (throughput mode).
COUNTER_KEY = "bench:done"
#: One publish-to-start latency (seconds) pushed per run (latency mode: the producer stamped the time).
LATENCY_KEY = "bench:latency"

_client: tuple[int, redis.Redis] | None = None


def _redis() -> redis.Redis:
    # One connection per process, opened after fork (a prefork child must not share its parent's socket).
    global _client
    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), redis.Redis.from_url(settings.REDIS_URL))
    return _client[1]


def _one_call(published_at: float | None) -> None:
    if published_at is None:
        _redis().incr(COUNTER_KEY)
    else:
        _redis().rpush(LATENCY_KEY, time.time() - published_at)


# A hard time limit below the broker visibility timeout, or the worker's guard refuses to start.
@app.task(base=celery.Task, name="bench.bare_noop", ignore_result=True, time_limit=60)
def bare_noop(published_at: float | None = None) -> None:
    """A plain Celery task: one Redis call, no telemetry, no reliability hooks."""
    _one_call(published_at)


@app.task(name="bench.observable_noop", ignore_result=True)
def observable_noop(published_at: float | None = None) -> None:
    """The same work through the app's base task, ``ObservableTask``."""
    _one_call(published_at)


@app.task(base=celery.Task, name="bench.bare_pass", ignore_result=True, time_limit=60)
def bare_pass() -> None:
    """A plain Celery task that does nothing."""


@app.task(name="bench.observable_pass", ignore_result=True)
def observable_pass() -> None:
    """An ``ObservableTask`` that does nothing."""


@signals.worker_process_init.connect
def _contrib_reference(**kwargs: object) -> None:
    if os.environ.get(contrib.CONTRIB_ENV):
        contrib.instrument()
