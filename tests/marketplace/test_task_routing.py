"""Task routing (``CELERY_TASK_ROUTES`` / ``CELERY_TASK_QUEUES``): every publisher - a ``.delay()``, the deferred
dead-letter record, beat's ticks - sends each task to the queue of what it needs, and a worker started without
``-Q`` consumes every declared queue.

The publishers run as their own processes with every queue renamed for the test (the names are
environment variables): no worker consumes the renamed queues, so each message is read where it landed in
Redis.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis

from marketplace.celery import app as celery_app
from tests.conftest import ROOT, WorkerProcess, queue_env, renamed_queues, running_beat, wait_for
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
def renamed(redis_client: redis.Redis) -> Iterator[dict[str, str]]:
    """Queue role -> a name of this test's own; its messages are deleted at the end."""
    queues = renamed_queues()
    yield queues
    redis_client.delete(*queues.values())


def _env(worker_env: dict[str, str], queues: dict[str, str]) -> dict[str, str]:
    return {**worker_env, **queue_env(queues)}


def _tasks_in(client: redis.Redis, queue: str) -> list[str]:
    messages: list[bytes] = client.lrange(queue, 0, -1)  # type: ignore[assignment]
    return sorted(json.loads(raw)["headers"]["task"] for raw in messages)


def test_each_task_is_published_to_the_queue_of_its_role(worker_env, renamed, redis_client):
    """Given the project's publishers (the tasks' ``.delay()``, the dead-letter deferral while Postgres is down,
    an unrouted task), when each publishes, then its message waits in its role's queue - the deferred record
    in the dead-letter queue, not in the failed task's own."""
    env = {**_env(worker_env, renamed), "DATABASE_URL": f"postgres://postgres@127.0.0.1:{free_port()}/unreachable"}

    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", PUBLISH], cwd=ROOT,
        env={**env, "FAILED_QUEUE": renamed["deliveries"]}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert {role: _tasks_in(redis_client, name) for role, name in renamed.items()} == EXPECTED


def test_beat_publishes_each_periodic_task_to_the_queue_of_its_role(worker_env, renamed, redis_client, tmp_path):
    """Given beat with every entry due, when it ticks, then the sweep goes to the promos queue, the delivery
    safety net to the fan-out queue and both retention tasks to the maintenance queue."""
    expected = {
        "promos": ["promotions.tasks.check_active_promos"],
        "fanout": ["promotions.tasks.process_notification_queue"],
        "maintenance": EXPECTED["maintenance"],
    }

    with running_beat(_env(worker_env, renamed), tmp_path):

        def published() -> dict[str, list[str]]:
            found = {role: _tasks_in(redis_client, renamed[role]) for role in expected}
            return found if all(found.values()) else {}

        assert wait_for(published, what="beat's four ticks") == expected
    assert not any(_tasks_in(redis_client, renamed[role]) for role in ("deliveries", "deadletters", "default"))


def test_a_worker_started_without_q_consumes_every_declared_queue(celery_worker: WorkerProcess):
    """The session's worker, started without ``-Q`` (a one-worker development setup), consumes the default
    queue and every routed one."""
    from django.conf import settings

    replies = celery_app.control.inspect(destination=[celery_worker.name], timeout=10).active_queues() or {}

    consumed = {queue["name"] for queue in replies[celery_worker.name]}
    assert consumed == {queue.name for queue in settings.CELERY_TASK_QUEUES}
    assert consumed >= {"promos", "fanout", "deliveries", "maintenance", "deadletters", "celery"}
