"""RabbitMQ as the broker (``CELERY_BROKER_URL=amqp://...``), against the machine's real RabbitMQ in a virtual host
of this run's own and real ``celery worker`` processes: tasks, singleton tasks (their lock in the app's own Redis),
countdowns waiting in the broker through native delayed delivery (quorum queues behind topic exchanges), an
unregistered task dead-lettered, spans naming RabbitMQ, the backlog read by a passive declare, the start-up guard
on RabbitMQ's consumer timeout; and chaos that loses nothing - a task that always kills its worker (quarantined),
a child killed mid-run (runs again), a run past its hard time limit (one dead letter), a body that is not JSON and
a message without task headers (dead-lettered), a broker restart with tasks running, queued and delayed (all
run; on a node of the test's own).

The test process's own Celery app speaks the run's broker (``tests/conftest.py``); the producer here is a process
started with the RabbitMQ environment, as a web process or beat would be.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import conftest
from tests.conftest import RESULT_TIMEOUT, ROOT, TEST_REDIS_URL, TEST_SLOT, WorkerProcess, wait_for
from tests.otlp_receiver import OtlpReceiver
from tests.rabbitmq import rabbitmqctl
from tests.rabbitmq_node import RabbitMQNode

QUEUES = "celery,promos,fanout,deliveries,maintenance,deadletters"


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    """A virtual host of this run's own (its slot and a random part), removed with everything in it."""
    name = f"marketplace-test-{TEST_SLOT}-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)


@pytest.fixture(scope="module")
def rabbitmq_env(worker_env: dict[str, str], vhost: str, otlp: OtlpReceiver) -> dict[str, str]:
    """The workers' environment with RabbitMQ as the broker; results and the app's state in the run's Redis;
    spans to the module's OTLP receiver."""
    return {
        **worker_env,
        "CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
        "CELERY_RESULT_BACKEND": TEST_REDIS_URL,
        "REDIS_URL": TEST_REDIS_URL,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


#: What every producer process starts with: the app loaded, ``tests.tasks`` imported.
_PRELUDE = (
    "import json, time, django\n"
    "from marketplace.celery import app\n"
    "django.setup()\n"
    "import tests.tasks as t\n"
    "out = None\n"
)


def _produce(env: dict[str, str], code: str) -> Any:
    """Run ``code`` in a producer process with ``env`` (the app and ``tests.tasks`` loaded, ``app`` and ``t``
    bound); what it assigns to ``out`` comes back as JSON."""
    script = _PRELUDE + code + "\nprint(json.dumps(out))\n"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def rabbitmq_worker(rabbitmq_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    log_path = tmp_path_factory.mktemp("rabbitmq-worker") / "worker.log"
    worker = WorkerProcess(rabbitmq_env, log_path, "--concurrency=2", "--include=tests.tasks", "-Q", QUEUES)
    # The suite's quiescing before a database flush asks its workers over Redis; this one is not there. Its
    # tasks here are short and the one test that reads the database waits for the row the worker wrote.
    conftest._live_workers.discard(worker)
    try:
        answered = _produce(
            rabbitmq_env,
            f"deadline = time.monotonic() + 60\n"
            f"while not (out := app.control.ping(destination=[{worker.name!r}], timeout=1)):\n"
            f"    assert time.monotonic() < deadline, 'no answer to ping'\n",
        )
        assert answered, worker.log()
        yield worker
    finally:
        worker.stop()


def test_a_worker_on_rabbitmq_runs_tasks_singletons_and_countdowns_held_by_the_broker(
    rabbitmq_env: dict[str, str], rabbitmq_worker: WorkerProcess, vhost: str
):
    """A task's result comes back; a singleton task runs (its lock is in Redis, not the broker); a countdown is
    not held by the worker meanwhile (``inspect scheduled`` is empty) and runs once it is due - Celery's native
    delayed delivery, on quorum queues behind topic exchanges, without its direct-exchange warning; a delay under
    a second and an ETA between two seconds run too, never sooner than asked (delayed delivery routes by whole
    seconds: the worker holds an ETA's fraction, and a delay under one second waits one)."""
    token = uuid.uuid4().hex
    out = _produce(
        rabbitmq_env,
        f"echo = t.echo.delay({token!r}).get(timeout={RESULT_TIMEOUT})\n"
        f"singleton = t.overlapping.delay({token!r} + '-s', 0.1).get(timeout={RESULT_TIMEOUT})\n"
        f"published = time.time()\n"
        f"later = t.echo.apply_async(({token!r} + '-later',), countdown=3)\n"
        f"held = [r for rs in (app.control.inspect(timeout=2).scheduled() or {{}}).values() for r in rs]\n"
        f"out = {{'echo': echo, 'singleton': singleton, 'held': held,\n"
        f"       'later': later.get(timeout={RESULT_TIMEOUT}), 'waited': time.time() - published}}\n"
        # Delayed delivery routes by whole seconds: a delay under one second (a retry's jittered backoff) and an
        # ETA between two seconds still run, and no sooner than asked.
        f"import datetime\n"
        f"published = time.time()\n"
        f"short = t.echo.apply_async(({token!r} + '-short',), countdown=0.4)\n"
        f"at = published + 1.5\n"
        f"timed = t.echo.apply_async(({token!r} + '-eta',), eta=datetime.datetime.fromtimestamp(at, datetime.UTC))\n"
        f"out['short'] = [short.get(timeout={RESULT_TIMEOUT}), time.time() - published]\n"
        f"out['eta'] = [timed.get(timeout={RESULT_TIMEOUT}), time.time() - at]\n",
    )
    assert out["echo"] == token
    assert out["singleton"] == "ran"
    assert out["held"] == []
    assert out["later"] == f"{token}-later"
    assert out["waited"] >= 3
    assert out["short"][0] == f"{token}-short" and out["short"][1] >= 0.4
    assert out["eta"][0] == f"{token}-eta" and out["eta"][1] >= 0
    queues = dict(line.split("\t") for line in rabbitmqctl("list_queues", "-p", vhost, "name", "type").splitlines()[1:])
    assert {queues[name] for name in QUEUES.split(",")} == {"quorum"}, queues
    assert "direct exchange" not in rabbitmq_worker.log()


def test_spans_on_rabbitmq_name_it_as_the_messaging_system(
    rabbitmq_env: dict[str, str], rabbitmq_worker: WorkerProcess, otlp: OtlpReceiver
):
    """The publish and the run of a task on RabbitMQ say ``messaging.system=rabbitmq`` and the broker's address
    (never its credentials), as the OpenTelemetry messaging conventions require; the run is the publish's child."""
    token = uuid.uuid4().hex
    task_id = _produce(
        rabbitmq_env,
        # A producer process with telemetry on, as web and beat run (flushed at exit).
        f"from observability import telemetry\n"
        f"telemetry.setup('test-producer')\n"
        f"r = t.echo.delay({token!r}); r.get(timeout={RESULT_TIMEOUT}); out = r.id\n"
        f"telemetry.shutdown()\n",
    )

    def spans() -> tuple[Any, Any] | None:
        sends = [s for s in otlp.spans_named("send celery") if s.attributes.get("messaging.message.id") == task_id]
        runs = [s for s in otlp.spans_named("run celery") if s.attributes.get("messaging.message.id") == task_id]
        return (sends[0], runs[0]) if sends and runs else None

    send, run = wait_for(spans, what="the publish and run spans of the task")
    for span in (send, run):
        assert span.attributes["messaging.system"] == "rabbitmq"
        assert (span.attributes["server.address"], span.attributes["server.port"]) == ("127.0.0.1", 5672)
        assert "guest" not in repr(span.attributes)
    assert (run.trace_id, run.parent_span_id) == (send.trace_id, send.span_id)


@pytest.mark.django_db(transaction=True)
def test_an_unregistered_task_on_rabbitmq_is_dead_lettered(
    rabbitmq_env: dict[str, str], rabbitmq_worker: WorkerProcess
):
    """A message for a task no worker knows is recorded in the dead-letter store and acknowledged."""
    from observability.deadletters.models import DeadLetter

    task_id = _produce(rabbitmq_env, "out = app.send_task('no.such.task', args=[1], queue='celery').id")
    letter = wait_for(lambda: DeadLetter.objects.filter(task_id=task_id).first(), what="the dead letter")
    assert (letter.task_name, letter.reason, letter.args) == ("no.such.task", "unregistered_task", [1])


def test_the_backlog_of_a_queue_is_read_from_rabbitmq(rabbitmq_env: dict[str, str], vhost: str):
    """Messages waiting in a queue no worker consumes are counted by a passive declare; a queue that does not
    exist yet is left out rather than failing the others."""
    queue = f"backlog-{uuid.uuid4().hex[:8]}"
    out = _produce(
        rabbitmq_env,
        f"from observability import brokers\n"
        f"for _ in range(3): t.echo.apply_async(('waiting',), queue={queue!r})\n"
        f"out = [list(d) for d in brokers.current().backlog([{queue!r}, 'no-such-queue'])]\n",
    )
    assert out == [[queue, "0", 3]]


def test_a_worker_refuses_to_start_when_a_time_limit_reaches_the_consumer_timeout(
    rabbitmq_env: dict[str, str], tmp_path: Path
):
    """RabbitMQ closes the channel of a delivery unacknowledged past its consumer timeout (and requeues it: a
    second run): with the timeout below the tasks' 300 s hard limit, the worker exits naming them."""
    env = {**rabbitmq_env, "CELERY_BROKER_CONSUMER_TIMEOUT_SECONDS": "120"}
    worker = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "marketplace", "worker", "--concurrency=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert worker.returncode != 0
    assert "refusing to start: on rabbitmq, tasks could be delivered twice" in worker.stderr
    assert "promotions.tasks.check_active_promos: time_limit 300 s reaches the consumer timeout (120 s)" in (
        worker.stderr
    )


# --- Chaos on RabbitMQ: nothing lost --------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_task_that_always_kills_its_worker_is_quarantined_on_rabbitmq(
    rabbitmq_env: dict[str, str], rabbitmq_worker: WorkerProcess
):
    """SIGKILL of its own child, every time: RabbitMQ redelivers the message after each lost run, the lost runs
    are counted in the app's Redis, and after ``max_deliveries`` of them the next delivery is one
    ``poison_message`` dead letter instead of a run; the worker goes on serving."""
    from django.conf import settings

    from observability.deadletters.models import DeadLetter
    from tests import tasks

    token = uuid.uuid4().hex
    task_id = _produce(rabbitmq_env, f"out = t.kills_its_worker.delay({token!r}).id")
    letter = wait_for(lambda: DeadLetter.objects.filter(task_id=task_id).first(), what="the poison message")
    assert (letter.reason, letter.delivery_count) == ("poison_message", settings.DEAD_LETTER_MAX_DELIVERIES + 1)
    assert len(tasks.runs(token)) == settings.DEAD_LETTER_MAX_DELIVERIES
    after = _produce(rabbitmq_env, f"out = t.echo.delay('after').get(timeout={RESULT_TIMEOUT})")
    assert after == "after"


def test_a_task_whose_child_is_killed_mid_run_runs_again_on_rabbitmq(
    rabbitmq_env: dict[str, str], rabbitmq_worker: WorkerProcess, redis_client: Any
):
    """SIGKILL to the child running a task: the unacknowledged delivery goes back to its quorum queue and the
    task completes on its second run."""
    import os
    import signal

    token = uuid.uuid4().hex
    script = (
        f"r = t.slow_once.delay({token!r})\n"
        f"deadline = time.monotonic() + 60\n"
        f"while not (pid := t._redis().get('test:pid:' + {token!r})):\n"
        f"    assert time.monotonic() < deadline, 'the task never started'\n"
        f"    time.sleep(0.05)\n"
        f"print(json.dumps(int(pid)), flush=True)\n"
        f"out = r.get(timeout={RESULT_TIMEOUT})\n"
    )
    command = [sys.executable, "-c", _PRELUDE + script + "\nprint(json.dumps(out))\n"]
    with subprocess.Popen(command, cwd=ROOT, env=rabbitmq_env, stdout=subprocess.PIPE, text=True) as producer:
        assert producer.stdout is not None
        pid = json.loads(producer.stdout.readline())
        os.kill(pid, signal.SIGKILL)
        result = json.loads(producer.stdout.readline())
    assert producer.returncode == 0
    assert result == 2


@pytest.mark.django_db(transaction=True)
def test_a_run_killed_at_its_hard_time_limit_is_dead_lettered_once_on_rabbitmq(
    rabbitmq_env: dict[str, str], rabbitmq_worker: WorkerProcess
):
    """A run stuck past its hard time limit (2 s, the soft one ignored) is killed, recorded as one
    ``time_limit_exceeded`` dead letter and acknowledged - not redelivered - and the worker goes on."""
    from observability.deadletters.models import DeadLetter
    from tests import tasks

    token = uuid.uuid4().hex
    task_id = _produce(rabbitmq_env, f"out = t.sleeper.delay({token!r}, 30).id")
    letter = wait_for(lambda: DeadLetter.objects.filter(task_id=task_id).first(), what="the dead letter")
    assert (letter.reason, letter.exception_type) == ("time_limit_exceeded", "billiard.exceptions.TimeLimitExceeded")
    assert _produce(rabbitmq_env, f"out = t.echo.delay('after').get(timeout={RESULT_TIMEOUT})") == "after"
    assert len(tasks.runs(token)) == 1
    assert DeadLetter.objects.get(task_id=task_id).failure_count == 1


@pytest.mark.django_db(transaction=True)
def test_a_body_that_is_not_json_and_a_message_without_task_headers_are_dead_lettered_on_rabbitmq(
    rabbitmq_env: dict[str, str], rabbitmq_worker: WorkerProcess
):
    """Published straight to a task queue, bypassing Celery: bytes that do not decode, and a JSON message with no
    task headers - each becomes one ``undecodable_message`` dead letter, acknowledged; the next task runs."""
    from observability.deadletters.models import DeadLetter

    marker = uuid.uuid4().hex
    _produce(
        rabbitmq_env,
        "with app.connection_for_write() as connection:\n"
        "    producer = connection.Producer()\n"
        f"    producer.publish(b'{{not json ' + {marker!r}.encode(), exchange='celery', routing_key='celery',\n"
        "                     content_type='application/json', content_encoding='utf-8', serializer=None)\n"
        f"    producer.publish({{'marker': {marker!r}}}, exchange='celery', routing_key='celery', serializer='json')\n",
    )
    assert _produce(rabbitmq_env, f"out = t.echo.delay('alive').get(timeout={RESULT_TIMEOUT})") == "alive"

    def letters() -> list[DeadLetter] | None:
        found = list(DeadLetter.objects.filter(raw_message__contains=marker).order_by("id"))
        return found if len(found) == 2 else None

    not_json, no_headers = wait_for(letters, what="two dead letters")
    assert {not_json.reason, no_headers.reason} == {"undecodable_message"}
    assert "kombu.exceptions.DecodeError" in {not_json.exception_type, no_headers.exception_type}
    assert "no task headers" in no_headers.exception_message or "no task headers" in not_json.exception_message


@pytest.fixture
def restartable_node() -> Iterator[RabbitMQNode]:
    """A RabbitMQ node of this test's own: stopping the machine's would stop every run on it."""
    node = RabbitMQNode()
    try:
        yield node
    finally:
        node.stop()


@pytest.mark.django_db(transaction=True)
def test_a_broker_restart_loses_no_running_waiting_or_delayed_task(
    worker_env: dict[str, str], restartable_node: RabbitMQNode, tmp_path: Path
):
    """``rabbitmqctl stop_app`` / ``start_app`` while two tasks run, four wait in the queue and three wait for
    their countdown in the delayed-delivery exchanges: the worker reconnects by itself, the two runs whose
    acknowledgement the restart lost run again (at least once), and every waiting and delayed task runs - the
    delayed ones no sooner than due. Nothing is dead-lettered."""
    from celery.result import AsyncResult

    from observability.deadletters.models import DeadLetter
    from tests import tasks

    env = {**worker_env, "CELERY_BROKER_URL": restartable_node.url, "CELERY_RESULT_BACKEND": TEST_REDIS_URL,
           "REDIS_URL": TEST_REDIS_URL}  # fmt: skip
    worker = WorkerProcess(env, tmp_path / "worker.log", "--concurrency=2", "--include=tests.tasks", "-Q", "celery")
    conftest._live_workers.discard(worker)  # on a broker of its own, out of the suite's quiescing
    try:
        token = uuid.uuid4().hex
        ids = _produce(
            env,
            f"deadline = time.monotonic() + 60\n"
            f"while not app.control.ping(destination=[{worker.name!r}], timeout=1):\n"
            f"    assert time.monotonic() < deadline, 'no answer to ping'\n"
            f"held = [t.held.delay({token!r} + f'-held-{{n}}').id for n in range(2)]\n"
            f"queued = [t.echo.delay({token!r} + f'-queued-{{n}}').id for n in range(4)]\n"
            f"due = time.time() + 6\n"
            f"delayed = [t.echo.apply_async(({token!r} + f'-delayed-{{n}}',), countdown=6).id for n in range(3)]\n"
            f"out = {{'held': held, 'queued': queued, 'delayed': delayed, 'due': due}}\n",
        )
        wait_for(lambda: all(tasks.runs(f"{token}-held-{n}") for n in range(2)), what="both held tasks to run")

        restartable_node.stop_app()
        restartable_node.start_app()
        for n in range(2):
            tasks.release(f"{token}-held-{n}", runs=3)  # the run going on, and a run again after the restart

        for task_id in [*ids["held"], *ids["queued"], *ids["delayed"]]:
            AsyncResult(task_id).get(timeout=RESULT_TIMEOUT)
        assert all(len(tasks.runs(f"{token}-queued-{n}")) >= 1 for n in range(4))
        delayed_runs = [tasks.runs(f"{token}-delayed-{n}") for n in range(3)]
        assert all(runs and min(runs) >= ids["due"] - 0.05 for runs in delayed_runs), (ids["due"], delayed_runs)
        assert not DeadLetter.objects.exists()
        assert worker.alive(), worker.log()
    finally:
        worker.stop()
