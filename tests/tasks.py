"""Tasks that exist only for the tests, loaded by test workers with ``--include=tests.tasks``.

Each records what happened to it in Redis (the test's own database), so a test can assert on the runs a
worker made without sharing memory with it.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import redis
from celery import shared_task
from django.conf import settings

from observability.errors import PermanentError, TransientError
from observability.task import ObservableTask


def _redis() -> redis.Redis:
    # The app's own Redis (REDIS_URL): the broker's by default, a Redis of its own beside RabbitMQ.
    return redis.Redis.from_url(settings.REDIS_URL)


def runs(token: str) -> list[float]:
    """Start times of the runs of the task called with ``token``."""
    return [float(t) for t in _redis().lrange(f"test:runs:{token}", 0, -1)]  # type: ignore[union-attr]


def _record_run(token: str) -> int:
    return int(_redis().rpush(f"test:runs:{token}", time.time()))  # type: ignore[arg-type]


@shared_task(
    base=ObservableTask,
    name="tests.flaky",
    max_retries=3,
    retry_backoff_base_seconds=0.3,
    retry_backoff_max_seconds=5.0,
)
def flaky(token: str, failures: int) -> int:
    """Fails with a transient error on its first ``failures`` runs, then returns its run number."""
    run = _record_run(token)
    if run <= failures:
        raise TransientError(f"transient failure {run} of {failures}")
    return run


@shared_task(name="tests.permanent")
def permanent(token: str) -> None:
    _record_run(token)
    raise PermanentError("this input can never work")


@shared_task(name="tests.permanent_verbose")
def permanent_verbose(token: str, size: int) -> None:
    """Fails at once with a message (and so a traceback) of ``size`` characters."""
    _record_run(token)
    raise PermanentError(f"{token} " + "x" * size)


@shared_task(base=ObservableTask, name="tests.sleeper", soft_time_limit=1, time_limit=2)
def sleeper(token: str, seconds: float) -> str:
    """Stuck where the soft limit cannot reach it (the soft-limit signal is ignored, as in a C call),
    so only the hard limit ends it."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    _record_run(token)
    time.sleep(seconds)
    return "woke up"


@shared_task(name="tests.kills_its_worker")
def kills_its_worker(token: str) -> None:
    """Dies like an OOM kill: SIGKILL to its own process, every time."""
    _record_run(token)
    os.kill(os.getpid(), signal.SIGKILL)


@shared_task(name="tests.exits_its_worker")
def exits_its_worker(token: str) -> None:
    """Calls ``sys.exit`` (as a CLI library might): the child exits with it, every time."""
    _record_run(token)
    sys.exit(3)


@shared_task(name="tests.slow_once")
def slow_once(token: str) -> int:
    """First run publishes its pid and hangs (a test kills it); later runs return their run number."""
    run = _record_run(token)
    if run == 1:
        _redis().set(f"test:pid:{token}", os.getpid())
        time.sleep(60)
    return run


@shared_task(name="tests.echo")
def echo(token: str) -> str:
    _record_run(token)
    return token


@shared_task(name="tests.publishes_echo")
def publishes_echo(token: str, queue: str) -> str:
    """Publish ``echo(token)`` to ``queue`` from inside this run (a sub-task); returns its id."""
    return str(echo.apply_async((token,), queue=queue, ignore_result=True).id)


@shared_task(base=ObservableTask, name="tests.overlapping", singleton=True)
def overlapping(token: str, seconds: float) -> str:
    _record_run(token)
    time.sleep(seconds)
    return "ran"


def release(token: str, runs: int = 1) -> None:
    """Let ``runs`` runs of ``tests.held`` called with ``token`` return."""
    _redis().rpush(f"test:release:{token}", *["go"] * runs)


@shared_task(name="tests.held")
def held(token: str) -> str:
    """Runs until the test calls :func:`release` for ``token`` (or 120 s pass): a task the test holds."""
    _record_run(token)
    _redis().blpop([f"test:release:{token}"], timeout=120)
    return token


@shared_task(name="tests.pid")
def pid() -> int:
    """The pool child that ran it: a test counts the children a workload went through."""
    return os.getpid()
