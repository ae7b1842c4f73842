"""Task routing (``CELERY_TASK_ROUTES`` / ``CELERY_TASK_QUEUES``): every publisher - a ``.delay()``, the deferred
dead-letter record, beat's ticks - sends each task to the queue of what it needs, and a worker started without
``-Q`` consumes every declared queue.

The publishers run as their own processes with every queue renamed for the test (the names are
environment variables): no worker consumes the renamed queues, so each message is read where it landed in
Redis.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

import pytest
from kombu import Connection, Exchange, Queue
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
)

from marketplace.celery import app as celery_app
from tests.broker_queues import QueueReader
from tests.conftest import (
    ROOT,
    TEST_BROKER,
    TEST_BROKER_URL,
    WorkerProcess,
    queue_env,
    renamed_queues,
    running_beat,
    wait_for,
)
from tests.net import free_port

#: Each task published by the script below, by the queue role it must land in.
EXPECTED = {
    "promos": ["promotions.tasks.check_active_promos", "promotions.tasks.sync_promo"],
    "fanout": [
        "promotions.tasks.process_notification_queue",
        "promotions.tasks.queue_promo_notifications",
        "promotions.tasks.send_subscription_confirmation",
    ],
    "deliveries": ["promotions.tasks.deliver_notification_batch"],
    "maintenance": [
        "observability.deadletters.tasks.purge_expired_dead_letters",
        "promotions.tasks.cleanup_expired_promos",
    ],
    "deadletters": ["observability.record_dead_letter"],
    "default": ["tests.unrouted"],
}

# Each task as the project publishes it. The dead letter goes through the real deferral: this process's
# database is unreachable, so dead_letter_record_safely publishes the record task (for a failure of the
# deliveries queue, which must not receive it).
PUBLISH = """
import os
from celery import current_app
from observability.deadletters.services import dead_letter_record_safely
from observability.deadletters.tasks import purge_expired_dead_letters
from observability.failure import Failure
from promotions import tasks

tasks.check_active_promos.delay()
tasks.sync_promo.delay(1)
tasks.queue_promo_notifications.delay([1])
tasks.process_notification_queue.delay()
tasks.deliver_notification_batch.delay()
tasks.send_subscription_confirmation.delay(1)
tasks.cleanup_expired_promos.delay()
purge_expired_dead_letters.delay()
current_app.send_task("tests.unrouted")
failed = Failure(reason="non_retryable_error", task_name="promotions.tasks.deliver_notification_batch",
                 task_id="routing-test", queue=os.environ["FAILED_QUEUE"])
assert dead_letter_record_safely(failed) is None, "recorded, not deferred"
"""


@pytest.fixture
def renamed(broker: QueueReader) -> Iterator[dict[str, str]]:
    """Queue role -> a name of this test's own; its queues are deleted at the end. On RabbitMQ each is declared
    and bound to the delayed-delivery exchanges first, as the worker of its role does when it starts: a countdown
    (the deferred record) to a queue no worker ever bound has nowhere to go when it is due."""
    queues = renamed_queues()
    if TEST_BROKER == "rabbitmq":
        with Connection(TEST_BROKER_URL) as connection:
            declare_native_delayed_delivery_exchanges_and_queues(connection, "quorum")
            for name in queues.values():
                queue = Queue(name, Exchange(name, "topic"), name, queue_arguments={"x-queue-type": "quorum"})
                queue(connection.default_channel).declare()
                bind_queue_to_native_delayed_delivery_exchange(connection, queue)
    yield queues
    broker.delete(*queues.values())


def _env(worker_env: dict[str, str], queues: dict[str, str]) -> dict[str, str]:
    return {**worker_env, **queue_env(queues)}


def _tasks_in(broker: QueueReader, queue: str) -> list[str]:
    return sorted(message["headers"]["task"] for message in broker.messages(queue))


def test_each_task_is_published_to_the_queue_of_its_role(worker_env, renamed, broker):
    """Given the project's publishers (the tasks' ``.delay()``, the dead-letter deferral while Postgres is down,
    an unrouted task), when each publishes, then its message waits in its role's queue - the deferred record
    in the dead-letter queue, not in the failed task's own."""
    env = {**_env(worker_env, renamed), "DATABASE_URL": f"postgres://postgres@127.0.0.1:{free_port()}/unreachable"}

    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", PUBLISH], cwd=ROOT,
        env={**env, "FAILED_QUEUE": renamed["deliveries"]}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    # The deferred record waits 5 s: on Redis in its queue already (a worker would hold it until due), on
    # RabbitMQ in the broker's delayed-delivery exchanges until then.
    found: dict[str, list[str]] = {}

    def published() -> bool:
        found.update({role: _tasks_in(broker, name) for role, name in renamed.items()})
        return found == EXPECTED

    with contextlib.suppress(pytest.fail.Exception):  # the assertion below shows what differs
        wait_for(published, interval=0.5, what="every task in its role's queue")
    assert found == EXPECTED


def test_beat_publishes_each_periodic_task_to_the_queue_of_its_role(worker_env, renamed, broker, tmp_path):
    """Given beat with every entry due, when it ticks, then the sweep goes to the promos queue, the delivery
    safety net to the fan-out queue and both retention tasks to the maintenance queue."""
    expected = {
        "promos": ["promotions.tasks.check_active_promos"],
        "fanout": ["promotions.tasks.process_notification_queue"],
        "maintenance": EXPECTED["maintenance"],
    }

    with running_beat(_env(worker_env, renamed), tmp_path):

        def published() -> dict[str, list[str]]:
            found = {role: _tasks_in(broker, renamed[role]) for role in expected}
            return found if all(found.values()) else {}

        assert wait_for(published, what="beat's four ticks") == expected
    assert not any(_tasks_in(broker, renamed[role]) for role in ("deliveries", "deadletters", "default"))


def test_a_worker_started_without_q_consumes_every_declared_queue(celery_worker: WorkerProcess):
    """The session's worker, started without ``-Q`` (a one-worker development setup), consumes the default
    queue and every routed one."""
    from django.conf import settings

    replies = celery_app.control.inspect(destination=[celery_worker.name], timeout=10).active_queues() or {}

    consumed = {queue["name"] for queue in replies[celery_worker.name]}
    assert consumed == {queue.name for queue in settings.CELERY_TASK_QUEUES}
    assert consumed >= {"promos", "fanout", "deliveries", "maintenance", "deadletters", "celery"}
