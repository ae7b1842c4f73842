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

from marketplace.celery import app as celery_app
from observability.deadletters.models import DeadLetter
from tests.conftest import ROOT, TEST_REDIS_URL, WorkerProcess, one_queue, wait_for
from tests.redis_server import RedisServer

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


@pytest.mark.django_db(transaction=True)
def test_messages_redis_refuses_to_hold_are_never_undecodable_and_never_lost(refusing_redis, worker_env, tmp_path):
    """Given a worker consuming from a Redis that, as messages arrive, refuses every write (out of memory under
    ``noeviction``), then no message is dead-lettered as undecodable; each is either still in its queue or
    recorded as ``broker_refused``, whole; the worker stays up; and once memory is back, the queue runs and a
    bulk ``dlq replay --reason broker_refused`` runs the others - every message runs."""
    server = refusing_redis
    queue = f"refused-{uuid.uuid4().hex[:8]}"
    env = {**worker_env, **one_queue(queue), "CELERY_BROKER_URL": server.url}
    worker = WorkerProcess(env, tmp_path / "worker.log", "--concurrency=1", "--include=tests.tasks")
    try:
        wait_for(lambda: worker.alive() and " ready." in worker.log(), what="the worker to be ready")
        # Staged in a queue nobody consumes, then moved into the worker's queue in the transaction that makes
        # Redis refuse writes: the worker pops them from a Redis that already refuses.
        staging = f"staging-{queue}"
        tokens = [uuid.uuid4().hex for _ in range(5)]
        with celery_app.connection_for_write(server.url) as connection:
            for token in tokens:
                celery_app.send_task("tests.echo", args=[token], queue=staging, connection=connection)
        # Addressed as if published to the worker's queue, which is where a replay sends them back.
        staged = [_readdressed(raw, queue) for raw in server.client.lrange(staging, 0, -1)]
        transaction = server.client.pipeline(transaction=True)
        transaction.delete(staging).rpush(queue, *reversed(staged))
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
            return {token for token in tokens if server.client.exists(f"test:runs:{token}")}

        wait_for(lambda: runs() == set(tokens), timeout=120, what="every message to run")
        assert not DeadLetter.objects.exclude(reason="broker_refused").exists()
    finally:
        worker.stop()
