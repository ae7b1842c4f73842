"""Shared fixtures: real Redis (a database of its own), real Postgres (pytest-django's test database) and
real Celery worker processes started with the project's own ``celery -A marketplace worker`` command.

Tests that a worker must see data from use ``django_db(transaction=True)``, so their rows are committed. Such a
test ends with the database flushed (``TRUNCATE``): before that, every worker still running (the session's,
a module's) is made quiet - nothing queued, reserved or running, countdowns revoked - so that no task writes
while the flush runs (a write that interleaves deadlocks it) or after it (into the next test's data). Workers,
beat and servers a test starts are stopped with their whole process group before its flush.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psycopg
import pytest
import redis
from celery.beat import PersistentScheduler
from django.conf import settings
from django.utils import timezone

from marketplace.celery import app as celery_app
from tests import rabbitmq
from tests.broker_queues import QueueReader
from tests.otlp_receiver import OtlpReceiver
from tests.smtp import SmtpSink

ROOT = Path(__file__).resolve().parent.parent
#: Redis databases a run may take for itself, one per run at a time (0 is ``make run``'s, 10 the benchmark's).
TEST_SLOTS = (15, 14, 13, 12, 11, 9, 8, 7, 6, 5, 4, 3, 2, 1)


def _claim_slot() -> tuple[int, psycopg.Connection[Any] | None]:
    """The slot (Redis database, test-database suffix) of this run: the first of ``TEST_SLOTS`` no other run on
    this machine holds, claimed by a Postgres advisory lock held for the session by the returned connection - so
    two checkouts' suites run side by side, each on a test database and a Redis database of its own. With
    ``TEST_REDIS_URL`` set, its database is the slot (:func:`_sole_run` still refuses one in use)."""
    if os.environ.get("TEST_REDIS_URL"):
        return int(urlparse(os.environ["TEST_REDIS_URL"]).path.lstrip("/") or 0), None
    db = settings.DATABASES["default"]
    connection = psycopg.connect(
        dbname="postgres", host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"],
        password=db["PASSWORD"] or None, autocommit=True,
    )  # fmt: skip
    for slot in TEST_SLOTS:
        row = connection.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (f"marketplace-tests-slot:{slot}",))
        if (taken := row.fetchone()) and taken[0]:
            return slot, connection
    connection.close()
    pytest.exit(f"every test slot ({TEST_SLOTS}) is held by another run: set TEST_REDIS_URL to a free database", 3)


TEST_SLOT, _slot_lock = _claim_slot()


#: The fixtures through which a test uses the broker. ``make test`` runs the suite on Redis, then the tests that use
#: one of these on RabbitMQ (``make test-rabbitmq``); the others do not depend on the broker.
BROKER_FIXTURES = frozenset({"worker_env", "broker"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On RabbitMQ, keep the tests that use the broker and skip those of them marked ``redis_broker`` (about the
    Redis transport itself, with their RabbitMQ counterpart named in the reason)."""
    if settings.BROKER != "rabbitmq":
        return
    kept, dropped = [], []
    for item in items:
        if not BROKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            dropped.append(item)
            continue
        kept.append(item)
        if (marker := item.get_closest_marker("redis_broker")) is not None:
            item.add_marker(pytest.mark.skip(reason=f"Redis broker only: {marker.kwargs.get('reason', '')}"))
    config.hook.pytest_deselected(items=dropped)
    items[:] = kept


def pytest_unconfigure(config: pytest.Config) -> None:
    """The slot is this run's until it ends: its lock goes with the connection."""
    if _slot_lock is not None:
        _slot_lock.close()


#: Tests own this Redis database: it is flushed at the start of the session.
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", f"redis://127.0.0.1:6379/{TEST_SLOT}")
# pytest-django creates (and at the end drops) this database: ``test_<name>_<slot>``, the run's own.
settings.DATABASES["default"].setdefault("TEST", {})["NAME"] = (
    f"test_{settings.DATABASES['default']['NAME']}_{TEST_SLOT}"
)

#: The broker of this run: Redis (the run's database) unless the settings loaded with ``CELERY_BROKER_URL`` set
#: to RabbitMQ (``make test-rabbitmq``), then a virtual host of the run's own on that server (:func:`_broker`).
#: Results and the app's state stay in the run's Redis database either way.
TEST_BROKER: str = settings.BROKER
TEST_VHOST = f"marketplace-tests-{TEST_SLOT}"
#: On RabbitMQ a user of the run's own, allowed only its virtual host (least privilege; a password to mask).
TEST_BROKER_USER, TEST_BROKER_PASSWORD = f"marketplace-tests-{TEST_SLOT}", uuid.uuid4().hex


def _run_broker_url() -> str:
    if TEST_BROKER != "rabbitmq":
        return TEST_REDIS_URL
    url = urlparse(settings.CELERY_BROKER_URL)
    netloc = f"{TEST_BROKER_USER}:{TEST_BROKER_PASSWORD}@{url.hostname or '127.0.0.1'}:{url.port or 5672}"
    return url._replace(netloc=netloc, path=f"/{TEST_VHOST}").geturl()


TEST_BROKER_URL = _run_broker_url()


def broker_url_at(port: int) -> str:
    """The run's broker URL pointed at 127.0.0.1:``port`` (a TCP proxy in front of the broker, or nothing)."""
    url = urlparse(TEST_BROKER_URL)
    credentials = url.netloc.rpartition("@")[0]
    return url._replace(netloc=f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}").geturl()


# Celery reads CELERY_BROKER_URL from the environment before its configuration: set both.
os.environ["CELERY_BROKER_URL"] = TEST_BROKER_URL
os.environ["CELERY_RESULT_BACKEND"] = TEST_REDIS_URL
celery_app.conf.update(broker_url=TEST_BROKER_URL, result_backend=TEST_REDIS_URL)
# The API's throttles count in the cache: the run's Redis database too (read lazily, at first use).
os.environ["CACHE_URL"] = os.environ["REDIS_URL"] = TEST_REDIS_URL
settings.CACHES["default"]["LOCATION"] = TEST_REDIS_URL
# The app's own state (singleton locks, lost-run counts; tests.tasks records runs there): the run's database too.
settings.REDIS_URL = TEST_REDIS_URL


#: Seconds a test waits for a task's result where it specifies no bound: generous, as :func:`wait_for`'s deadline.
RESULT_TIMEOUT = 60.0


def _group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still runs (zombies do not: nothing may reap an orphan here)."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: a zombie counts as alive
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after the last ")".
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
        if int(pgrp) == pgid and state not in ("Z", "X"):
            return True
    return False


def start_process(command: list[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen`` in a process group of its own, so that :func:`stop_process` can wait for its
    children too (a prefork worker's pool, a launcher's exec'd command)."""
    return subprocess.Popen(command, process_group=0, **popen_kwargs)


def stop_process(process: subprocess.Popen[Any], *, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Send ``sig`` to ``process`` (started by :func:`start_process`) and wait until it and every process of its
    group have exited; past ``timeout`` seconds, SIGKILL the group. Returns once nothing of it runs."""
    pgid = process.pid
    if process.poll() is None:
        process.send_signal(sig)
    deadline = time.monotonic() + timeout
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            with suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            deadline = time.monotonic() + timeout  # SIGKILL cannot be refused: this wait ends
        time.sleep(0.02)
    process.wait()


#: Queue role -> the variable naming its queue (marketplace/settings/broker.py, "Queues").
QUEUE_VARIABLES = {
    "promos": "CELERY_PROMOS_QUEUE",
    "fanout": "CELERY_FANOUT_QUEUE",
    "deliveries": "CELERY_DELIVERIES_QUEUE",
    "maintenance": "CELERY_MAINTENANCE_QUEUE",
    "deadletters": "CELERY_DEADLETTERS_QUEUE",
    "default": "CELERY_TASK_DEFAULT_QUEUE",
}


def one_queue(name: str) -> dict[str, str]:
    """Environment under which a process publishes every task to queue ``name``: a test's own worker, web or
    beat, out of reach of the session's other workers (which consume the queues of the default names)."""
    return dict.fromkeys(QUEUE_VARIABLES.values(), name)


def renamed_queues() -> dict[str, str]:
    """Queue role -> a name of a test's own (give them to its processes with :func:`queue_env`)."""
    token = uuid.uuid4().hex[:8]
    return {role: f"{role}-{token}" for role in QUEUE_VARIABLES}


def queue_env(queues: dict[str, str]) -> dict[str, str]:
    """Environment under which a process publishes to (and declares) the queues ``queues`` names by role."""
    return {QUEUE_VARIABLES[role]: name for role, name in queues.items()}


def wait_for(condition: Callable[[], Any], *, timeout: float = 60.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``condition`` until it returns a truthy value or ``timeout`` seconds pass (then fail).

    The default deadline is generous: it costs nothing when the condition comes, and a busy machine (two suites
    side by side on 2 CPUs) takes several times longer over a task's hops than an idle one. A test that
    specifies a bound asserts on the measured time instead."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def _sole_run() -> Iterator[None]:
    """Fail at once when another test run on this machine uses the same test database or Redis database: it
    would destroy the database (pytest-django recreates it) and flush Redis under the other. Two checkouts run
    side by side with their own ``DATABASE_URL`` (the test database is ``test_`` + its name) and
    ``TEST_REDIS_URL``. Held by a connection each, for the session: a run that dies releases both."""
    db = settings.DATABASES["default"]
    test_db = db.get("TEST", {}).get("NAME") or f"test_{db['NAME']}"
    pg = psycopg.connect(
        dbname="postgres", host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"],
        password=db["PASSWORD"] or None, autocommit=True,
    )  # fmt: skip
    # Advisory locks are per database: every run takes its lock in the server's ``postgres`` database.
    row = pg.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (f"marketplace-tests:{test_db}",)).fetchone()
    if not (row and row[0]):
        pg.close()
        pytest.exit(f"another test run uses the test database {test_db}: set DATABASE_URL to another name", 3)
    client = redis.Redis.from_url(TEST_REDIS_URL)
    name = f"marketplace-tests-db{client.connection_pool.connection_kwargs.get('db', 0)}"
    if any(c.get("name") == name for c in client.client_list()):  # type: ignore[union-attr]
        pg.close()
        pytest.exit(f"another test run uses {TEST_REDIS_URL}: set TEST_REDIS_URL to another database", 3)
    client.client_setname(name)
    yield
    client.close()
    pg.close()


@pytest.fixture(scope="session")
def django_db_setup(_sole_run: None, django_db_setup: None) -> None:
    """pytest-django's, once this run holds its test database (:func:`_sole_run`)."""


@pytest.fixture(scope="session")
def redis_client(_sole_run: None, _broker: None) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def _broker(_sole_run: None) -> Iterator[None]:
    """On RabbitMQ, the run's virtual host and user, made anew at the start (a killed run's are removed first)
    and removed at the end; on Redis, nothing more than the database :func:`redis_client` flushes."""
    if TEST_BROKER != "rabbitmq":
        yield
        return
    ctl = rabbitmq.rabbitmqctl
    if TEST_VHOST in ctl("list_vhosts", "--no-table-headers", "name").split():
        ctl("delete_vhost", TEST_VHOST)
    if TEST_BROKER_USER in ctl("list_users", "--no-table-headers").split():
        ctl("delete_user", TEST_BROKER_USER)
    ctl("add_vhost", TEST_VHOST)
    ctl("add_user", TEST_BROKER_USER, TEST_BROKER_PASSWORD)
    try:
        ctl("set_permissions", "-p", TEST_VHOST, TEST_BROKER_USER, ".*", ".*", ".*")
        yield
    finally:
        ctl("delete_vhost", TEST_VHOST)
        ctl("delete_user", TEST_BROKER_USER)


def broker_url_with_password(password: str) -> tuple[str, str]:
    """A URL of the run's broker that carries a password, and that password - for the tests that check it is
    masked: on Redis ``password`` (its default user, without one, takes any), on RabbitMQ the run's user's."""
    if TEST_BROKER == "rabbitmq":
        return TEST_BROKER_URL, TEST_BROKER_PASSWORD
    return TEST_REDIS_URL.replace("redis://", f"redis://default:{password}@"), password


@pytest.fixture(scope="session")
def broker(redis_client: redis.Redis) -> QueueReader:
    """The run's broker's queues as a test reads them, whichever broker it is (``tests/broker_queues.py``)."""
    return QueueReader(TEST_BROKER_URL)


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    """A local OTLP/HTTP receiver shared by a module's tests and its module-scoped workers."""
    receiver = OtlpReceiver()
    receiver.start()
    yield receiver
    receiver.stop()


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
        "CELERY_BROKER_URL": TEST_BROKER_URL,
        "CELERY_RESULT_BACKEND": TEST_REDIS_URL,
        "REDIS_URL": TEST_REDIS_URL,
        "CACHE_URL": TEST_REDIS_URL,
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
        self.process = start_process(
            [sys.executable, "-m", "celery", "-A", "marketplace", "worker", "--loglevel=info",
             "--without-mingle", "--without-gossip", "-n", self.name, *extra_args],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        _live_workers.add(self)

    def wait_ready(self, timeout: float = 60.0) -> None:
        def answered() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"worker exited with {self.process.returncode}:\n{self.log()}")
            return bool(celery_app.control.ping(destination=[self.name], timeout=0.5))

        wait_for(answered, timeout=timeout, what=f"worker {self.name} to answer ping")

    def log(self) -> str:
        return self.log_path.read_text()

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Warm shutdown (SIGTERM: running tasks finish), then wait for the pool's children to exit too."""
        _live_workers.discard(self)
        stop_process(self.process)
        self._log.close()


#: Workers running now, whoever started them: the ones :func:`quiesce_workers` makes quiet before a flush.
_live_workers: set[WorkerProcess] = set()


def live_worker_log_lines() -> list[str]:
    """Every whole line logged so far by the workers running now, whoever started them (not the last one while
    it is being written)."""
    return [line for worker in list(_live_workers) for line in worker.log().split("\n")[:-1]]


def quiesce_workers(*, timeout: float = 60.0) -> None:
    """Return once no running worker has, or can get, anything to do: countdowns (ETA tasks) revoked, the
    default queue purged (a worker of another queue runs what is left in it, and is waited for), nothing
    reserved or active - twice in a row, so that a message popped from Redis but not yet handled by a worker's
    event loop when it answered is seen the second time.

    A task still running may publish more (a fan-out, a retry): each round revokes and purges what appeared."""
    workers = [w for w in _live_workers if w.alive()]
    if not workers:
        return
    inspect = celery_app.control.inspect(destination=[w.name for w in workers], timeout=5)
    deadline = time.monotonic() + timeout
    quiet_rounds = 0
    busy: dict[str, Any] = {}
    while quiet_rounds < 2:
        if time.monotonic() > deadline:
            pytest.fail(f"workers still busy {timeout} s after the test, before its database flush: {busy}")
        scheduled = [r["request"]["id"] for rs in (inspect.scheduled() or {}).values() for r in rs]
        if scheduled:
            celery_app.control.revoke(scheduled, destination=[w.name for w in workers], reply=True, timeout=5)
        celery_app.control.purge()
        busy = {}
        for replies in (inspect.active() or {}, inspect.reserved() or {}):
            busy |= {w.name: "no answer" for w in workers if w.name not in replies and w.alive()}
            busy |= {name: requests for name, requests in replies.items() if requests}
        quiet_rounds = quiet_rounds + 1 if not busy else 0
        if busy:
            time.sleep(0.05)


def _is_transactional(request: pytest.FixtureRequest) -> bool:
    """pytest-django's own rule (``_django_db_helper``): the test's rows are committed, then flushed."""
    marker = request.node.get_closest_marker("django_db")
    if marker and (marker.kwargs.get("transaction") or marker.kwargs.get("reset_sequences")):
        return True
    return bool({"transactional_db", "live_server", "django_db_reset_sequences"} & set(request.fixturenames))


@pytest.fixture
def _django_db_helper(_django_db_helper: None, request: pytest.FixtureRequest) -> Iterator[None]:
    """pytest-django's database fixture (private; every ``django_db`` test goes through it), overridden so that
    workers are quiet between a transactional test and its flush: this teardown runs right before the
    parent's, which flushes. Were the name to change in pytest-django, this override would fail loudly
    (no parent fixture), not silently stop quiescing."""
    yield
    if _is_transactional(request):
        quiesce_workers()


class _WorkerStarter:
    """Starts workers with extra CLI arguments and environment and stops those it started."""

    def __init__(self, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> None:
        self._env = env
        self._tmp_path_factory = tmp_path_factory
        self._started: list[WorkerProcess] = []

    def __call__(self, *extra_args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        log_path = self._tmp_path_factory.mktemp("worker") / "worker.log"
        worker = WorkerProcess(
            {**self._env, **(env or {})}, log_path, "--concurrency=2", "--include=tests.tasks", *extra_args
        )
        self._started.append(worker)
        worker.wait_ready()
        return worker

    def stop_all(self) -> None:
        for worker in self._started:
            worker.stop()


@pytest.fixture
def start_worker(
    worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: start a worker with extra CLI arguments and environment, stopped (its children too) when the
    test ends, before its database is flushed."""
    starter = _WorkerStarter(worker_env, tmp_path_factory)
    yield starter
    starter.stop_all()


@pytest.fixture(scope="module")
def start_module_worker(
    worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., WorkerProcess]]:
    """:func:`start_worker` for a module's fixtures: its workers run until the module's last test has ended
    (each transactional test makes them quiet before its flush)."""
    starter = _WorkerStarter(worker_env, tmp_path_factory)
    yield starter
    starter.stop_all()


@pytest.fixture(scope="session")
def celery_worker(worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """The session's shared worker (prefork, concurrency 2)."""
    starter = _WorkerStarter(worker_env, tmp_path_factory)
    yield starter()
    starter.stop_all()


@pytest.fixture
def start_command() -> Iterator[Callable[..., subprocess.Popen[Any]]]:
    """Factory: :func:`start_process` for a test's CLI and server processes; each is stopped with its group when
    the test ends - failed or not, finished or not - before its database is flushed."""
    processes: list[subprocess.Popen[Any]] = []

    def start(command: list[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        processes.append(start_process(command, **popen_kwargs))
        return processes[-1]

    yield start
    for process in processes:
        stop_process(process, timeout=20)


@contextmanager
def running_beat(env: dict[str, str], tmp_path: Path, *extra_args: str) -> Iterator[Path]:
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
        beat = start_process(
            [sys.executable, "-m", "celery", "-A", "marketplace", "beat", "--loglevel=info", *extra_args],
            cwd=ROOT, env={**env, "CELERY_BEAT_SCHEDULE_FILENAME": schedule_file}, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            yield log_path
        finally:
            stop_process(beat)


@contextmanager
def stopped_after(worker: WorkerProcess) -> Iterator[WorkerProcess]:
    """Stop ``worker`` when the block ends, for tests that need a worker of their own."""
    try:
        yield worker
    finally:
        worker.stop()
