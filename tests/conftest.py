"""Shared fixtures: real Redis (a database of its own), real Postgres (pytest-django's test database) and
real Celery worker processes started with the project's own ``celery -A marketplace worker`` command.

Tests that a worker must see data from use ``django_db(transaction=True)``, so their rows are committed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.beat import PersistentScheduler
from django.conf import settings
from django.utils import timezone

from marketplace.celery import app as celery_app
from tests.otlp_receiver import OtlpReceiver
from tests.smtp import SmtpSink

ROOT = Path(__file__).resolve().parent.parent
#: Tests own this Redis database: it is flushed at the start of the session.
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

# Celery reads CELERY_BROKER_URL from the environment before its configuration: set both.
os.environ["CELERY_BROKER_URL"] = os.environ["CELERY_RESULT_BACKEND"] = TEST_REDIS_URL
celery_app.conf.update(broker_url=TEST_REDIS_URL, result_backend=TEST_REDIS_URL)


def wait_for(condition: Callable[[], Any], *, timeout: float = 20.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``condition`` until it returns a truthy value or ``timeout`` seconds pass (then fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """A local OTLP/HTTP receiver, for one test: the network boundary of a telemetry exporter."""
    receiver = OtlpReceiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def smtp_sink() -> Iterator[SmtpSink]:
    """A local SMTP server: the network boundary of the email channel."""
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


def _test_database_url() -> str:
    db = settings.DATABASES["default"]
    return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture(scope="session")
def worker_env(django_db_setup: None, redis_client: redis.Redis, smtp_sink: SmtpSink) -> dict[str, str]:
    """Environment of worker processes: the test database, the test Redis and the SMTP sink."""
    return {
        **os.environ,
        "DATABASE_URL": _test_database_url(),
        "CELERY_BROKER_URL": TEST_REDIS_URL,
        "CELERY_RESULT_BACKEND": TEST_REDIS_URL,
        "NOTIFICATION_BACKEND": "email",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(smtp_sink.port),
        "NOTIFICATION_RETRY_BASE_SECONDS": "0.2",
        "NOTIFICATION_RETRY_MAX_SECONDS": "1",
    }


class WorkerProcess:
    """A ``celery -A marketplace worker`` subprocess with its log file."""

    def __init__(self, env: dict[str, str], log_path: Path, *extra_args: str) -> None:
        self.name = f"test-{uuid.uuid4().hex[:8]}@localhost"
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "marketplace", "worker", "--loglevel=info",
             "--without-mingle", "--without-gossip", "-n", self.name, *extra_args],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 30.0) -> None:
        def answered() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"worker exited with {self.process.returncode}:\n{self.log()}")
            return bool(celery_app.control.ping(destination=[self.name], timeout=0.5))

        wait_for(answered, timeout=timeout, what=f"worker {self.name} to answer ping")

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def start_worker(
    worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: start a worker with extra CLI arguments and environment; all are stopped at the end."""
    started: list[WorkerProcess] = []

    def start(*extra_args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        log_path = tmp_path_factory.mktemp("worker") / "worker.log"
        worker = WorkerProcess(
            {**worker_env, **(env or {})}, log_path, "--concurrency=2", "--include=tests.tasks", *extra_args
        )
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def celery_worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    """The session's shared worker (prefork, concurrency 2)."""
    return start_worker()


@contextmanager
def running_beat(env: dict[str, str], tmp_path: Path) -> Iterator[Path]:
    """``celery -A marketplace beat`` with every entry due at once; yields its log file, stops it at the end.

    Beat's first run of an interval entry comes one interval after start; a schedule file whose entries last
    ran two days ago makes every entry due at once, as after a restart."""
    schedule_file = str(tmp_path / "beat-schedule")
    scheduler = PersistentScheduler(app=celery_app, schedule_filename=schedule_file, lazy=False)
    for entry in scheduler.schedule.values():
        entry.last_run_at = timezone.now() - timedelta(days=2)
    scheduler.sync()
    scheduler.close()
    log_path = tmp_path / "beat.log"
    with log_path.open("w") as log:
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "marketplace", "beat", "--loglevel=info"],
            cwd=ROOT, env={**env, "CELERY_BEAT_SCHEDULE_FILENAME": schedule_file}, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            yield log_path
        finally:
            beat.terminate()
            beat.wait(timeout=20)


@contextmanager
def stopped_after(worker: WorkerProcess) -> Iterator[WorkerProcess]:
    """Stop ``worker`` when the block ends, for tests that need a worker of their own."""
    try:
        yield worker
    finally:
        worker.stop()
