"""The Redis transport when Redis refuses a write that is not the message's fault, and for consumers that do not
acknowledge.

A private ``redis-server`` (tests/redis_server.py) is made to refuse every write (``maxmemory 1`` under
``noeviction``) while a real worker consumes from it: no message may be dead-lettered as undecodable, none may
be lost, and a bulk replay once memory is back runs every one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from redis.client import Pipeline
from redis.exceptions import ResponseError

from marketplace.celery import app as celery_app
from observability.deadletters.models import DeadLetter
from tests import tasks
from tests.conftest import ROOT, TEST_REDIS_URL, WorkerProcess, one_queue, wait_for
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis_broker(reason="Redis refusing writes (OOM, MISCONF)")

TRANSPORT = "observability.messaging.redis_transport:Transport"


class CallbackError(Exception):
    """Raised by a test consumer's callback."""


@pytest.mark.django_db
def test_a_no_ack_consumers_callback_error_propagates_and_writes_no_dead_letter():
    """A ``no_ack`` consumer's callback (pidbox replies, event receivers) that raises gets its exception out of
    ``drain_events``, as with kombu's stock Redis transport; the message is not taken for an undecodable one."""
    name = f"no-ack-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    with Connection(TEST_REDIS_URL, transport=TRANSPORT) as connection:
        channel = connection.default_channel
        Producer(channel).publish({"hello": "world"}, exchange=queue.exchange, routing_key=name, declare=[queue])

        def callback(body: object, message: object) -> None:
            raise CallbackError(f"the callback saw {body}")

        consumer = Consumer(channel, queues=[queue], callbacks=[callback], no_ack=True, accept=["json"])
        with consumer, pytest.raises(CallbackError, match="the callback saw"):
            connection.drain_events(timeout=10)
        queue(channel).delete()
    assert not DeadLetter.objects.exists()


@pytest.mark.django_db
def test_a_redis_error_of_a_consumers_callback_is_raised_and_the_message_not_put_back_twice(redis_client):
    """A ``ResponseError`` a callback raises once QoS holds the message is the consumer's, not Redis refusing the
    message: raised as kombu raises it, the message kept once (in the unacknowledged index), never also put
    back in its queue."""
    name = f"acked-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    with Connection(TEST_REDIS_URL, transport=TRANSPORT) as connection:
        channel = connection.default_channel
        Producer(channel).publish({"hello": "world"}, exchange=queue.exchange, routing_key=name, declare=[queue])

        def callback(body: object, message: object) -> None:
            raise ResponseError("the callback's own Redis call failed")

        consumer = Consumer(channel, queues=[queue], callbacks=[callback], accept=["json"])
        with consumer, pytest.raises(ResponseError, match="the callback's own"):
            connection.drain_events(timeout=10)
        assert redis_client.llen(name) == 0
        held = channel.qos._delivered
        assert len(held) == 1
        channel.qos.restore_unacked()
        assert redis_client.llen(name) == 1
        queue(channel).delete()
    assert not DeadLetter.objects.exists()


@pytest.fixture
def refusing_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def _readdressed(raw: bytes, queue: str) -> bytes:
    envelope = json.loads(raw)
    envelope["properties"]["delivery_info"].update(exchange=queue, routing_key=queue)
    return json.dumps(envelope).encode()


def _replay_broker_refused(env: dict[str, str]) -> str:
    """``manage.py dlq replay --reason broker_refused`` in a process of its own, publishing to the private Redis
    (with the test tasks registered, as on the workers)."""
    code = (
        "import django; django.setup(); import tests.tasks; from django.core.management import call_command; "
        "call_command('dlq', 'replay', '--reason', 'broker_refused')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _staged(server: RedisServer, queue: str, tokens: list[str]) -> Pipeline:
    """A transaction that moves a ``tests.echo`` message per token into ``queue``, for the caller to add what makes
    Redis refuse and execute: the worker pops them from a Redis that already refuses. They are published to a
    queue nobody consumes first, and addressed as if published to ``queue``, where a replay sends them back."""
    staging = f"staging-{queue}"
    with celery_app.connection_for_write(server.url) as connection:
        for token in tokens:
            celery_app.send_task("tests.echo", args=[token], queue=staging, connection=connection)
    raw_messages: list[bytes] = server.client.lrange(staging, 0, -1)  # type: ignore[assignment]
    staged = [_readdressed(raw, queue) for raw in raw_messages]
    transaction = server.client.pipeline(transaction=True)
    transaction.delete(staging)
    transaction.rpush(queue, *reversed(staged))
    return transaction


def _start_worker(env: dict[str, str], tmp_path: Path) -> WorkerProcess:
    # Not the start_worker fixture: its readiness ping goes through the session's Redis.
    worker = WorkerProcess(env, tmp_path / "worker.log", "--concurrency=1", "--include=tests.tasks")
    wait_for(lambda: worker.alive() and " ready." in worker.log(), what="the worker to be ready")
    return worker


@pytest.mark.django_db(transaction=True)
def test_a_message_redis_refuses_but_takes_back_stays_in_its_queue(refusing_redis, worker_env, tmp_path):
    """Given a Redis that refuses the write to its unacknowledged index (here: the index key holds a string,
    ``WRONGTYPE``) but takes writes to the queue, then the message is put back in its queue, never
    dead-lettered; once Redis holds it again, it runs."""
    server = refusing_redis
    queue = f"refused-{uuid.uuid4().hex[:8]}"
    worker = _start_worker({**worker_env, **one_queue(queue), "CELERY_BROKER_URL": server.url}, tmp_path)
    try:
        token = uuid.uuid4().hex
        _staged(server, queue, [token]).set("unacked_index", "not a sorted set").execute()
        wait_for(lambda: "put the message back in its queue" in worker.log(), what="the message to be put back")
        assert not DeadLetter.objects.exists()
        server.client.delete("unacked_index")
        wait_for(lambda: tasks.runs(token), what="the message to run")  # recorded in the app's Redis (REDIS_URL)
        assert not DeadLetter.objects.exists()
        assert worker.alive()
    finally:
        worker.stop()


@pytest.mark.django_db(transaction=True)
def test_messages_redis_refuses_to_hold_are_never_undecodable_and_never_lost(refusing_redis, worker_env, tmp_path):
    """Given a worker consuming from a Redis that, as messages arrive, refuses every write (out of memory under
    ``noeviction``), then no message is dead-lettered as undecodable; each is either still in its queue or
    recorded as ``broker_refused``, whole; the worker stays up; and once memory is back, the queue runs and a
    bulk ``dlq replay --reason broker_refused`` runs the others - every message runs."""
    server = refusing_redis
    queue = f"refused-{uuid.uuid4().hex[:8]}"
    env = {**worker_env, **one_queue(queue), "CELERY_BROKER_URL": server.url}
    worker = _start_worker(env, tmp_path)
    try:
        tokens = [uuid.uuid4().hex for _ in range(5)]
        transaction = _staged(server, queue, tokens)
        transaction.config_set("maxmemory-policy", "noeviction").config_set("maxmemory", 1)
        transaction.execute()

        def refused() -> list[DeadLetter]:
            return list(DeadLetter.objects.filter(reason="broker_refused"))

        wait_for(refused, what="a message Redis refused to be recorded as broker_refused")
        assert "broker.refused" in worker.log()
        assert not DeadLetter.objects.exclude(reason="broker_refused").exists()
        recorded = {entry.args[0] for entry in refused()}
        waiting = int(server.client.llen(queue))
        assert len(recorded) + waiting == len(tokens), "a message is neither in its queue nor recorded"
        assert worker.alive()

        server.accept_writes()
        out = _replay_broker_refused(env)
        assert f"Published {len(recorded)} task(s); skipped 0." in out

        def runs() -> set[str]:
            return {token for token in tokens if tasks.runs(token)}

        wait_for(lambda: runs() == set(tokens), timeout=120, what="every message to run")
        assert not DeadLetter.objects.exclude(reason="broker_refused").exists()
    finally:
        worker.stop()
