"""Shared machinery of the benchmarks: the isolated environment (Postgres ``marketplace_bench``, Redis db 10),
bench worker subprocesses, a lean local OTLP/Sentry sink, and summary statistics.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LOGS = RESULTS / "logs"

#: Isolation: never the databases of the test suite or of the dev stack.
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/marketplace_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
#: The broker: that Redis unless ``BENCH_BROKER_URL`` names a RabbitMQ virtual host of the bench's own; results,
#: the bench tasks' counters and the app's state stay in ``REDIS_URL``'s Redis either way.
BROKER_URL = os.environ.get("BENCH_BROKER_URL", REDIS_URL)
RABBITMQ = BROKER_URL.startswith(("amqp:", "amqps:"))

#: Variables that turn an integration on; removed from the bare environment whatever the caller's shell has.
_INTEGRATION_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "SENTRY_DSN")


def base_env() -> dict[str, str]:
    """Environment of every bench process: bench database and Redis, integrations off, logs at WARNING."""
    env = {k: v for k, v in os.environ.items() if k not in _INTEGRATION_VARS}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "marketplace.settings",
            "DJANGO_SECRET_KEY": env.get("DJANGO_SECRET_KEY", "bench-only-not-a-secret"),
            "DATABASE_URL": DATABASE_URL,
            "CELERY_BROKER_URL": BROKER_URL,
            "CELERY_RESULT_BACKEND": REDIS_URL,
            "REDIS_URL": REDIS_URL,
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "json",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    return env


def setup_django() -> None:
    """Point this process at the bench database and Redis (whatever the shell says), check both answer (creating
    the database if missing), ``django.setup()`` and migrate."""
    env = base_env()
    # LOG_LEVEL: the bench's own process (dlq commands, sweeps) keeps its per-entry INFO lines off the table.
    for key in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL", "DJANGO_SECRET_KEY",
                "LOG_LEVEL"):  # fmt: skip
        os.environ[key] = env[key]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
    from marketplace import preflight

    # One command on a fresh machine: the bench database is created if missing and follows the models.
    if preflight.main([], creatable_database=urlparse(env["DATABASE_URL"]).path.lstrip("/")) != 0:
        raise SystemExit(1)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", interactive=False, verbosity=0)


class Sink:
    """A local HTTP endpoint that accepts OTLP/HTTP exports and Sentry envelopes and only counts them.

    Leaner than ``tests/otlp_receiver.py`` on purpose: it does not decode protobuf, so the receiver takes as
    little of the machine's two cores as possible from the worker under test.
    """

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        self.bytes = 0
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                kind = self.path.rstrip("/").rsplit("/", 1)[-1]
                with sink._lock:
                    sink.requests[kind] = sink.requests.get(kind, 0) + 1
                    sink.bytes += len(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def otlp_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sentry_dsn(self) -> str:
        return f"http://benchkey@127.0.0.1:{self.port}/1"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def instrumented_env(sink: Sink) -> dict[str, str]:
    """Everything on: OTLP traces and metrics, Sentry, a JSON summary line per task (LOG_LEVEL=INFO)."""
    return {
        **base_env(),
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.otlp_endpoint,
        "SENTRY_DSN": sink.sentry_dsn,
        "SENTRY_ENVIRONMENT": "bench",
        "LOG_LEVEL": "INFO",
    }


class Worker:
    """A ``celery -A marketplace worker --include=bench.tasks`` subprocess, logging to a file."""

    def __init__(
        self, env: Mapping[str, str], log_name: str, *, concurrency: int = 2, loglevel: str = "WARNING",
        extra: Sequence[str] = (),
    ) -> None:  # fmt: skip
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{log_name}.log"
        self.name = f"bench-{uuid.uuid4().hex[:8]}@localhost"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "marketplace", "worker", f"--loglevel={loglevel}",
             f"--concurrency={concurrency}", "--pool=prefork", "--without-mingle", "--without-gossip",
             "--include=bench.tasks", "-n", self.name, *extra],
            cwd=ROOT, env=dict(env), stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(pid) for pid in path.read_text().split()]
        except OSError:
            return []

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def wait_until(condition: Callable[[], bool], *, timeout: float, interval: float = 0.01, what: str = "") -> float:
    """Poll ``condition`` until true; returns the time (perf_counter) it was first seen true."""
    deadline = time.perf_counter() + timeout
    while True:
        if condition():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class Summary:
    """Median and range of repeated measurements."""

    median: float
    low: float
    high: float
    samples: list[float]

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        values = list(samples)
        return cls(statistics.median(values), min(values), max(values), values)

    def to_json(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high, "samples": self.samples}


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]
