"""The app's own state lives in ``REDIS_URL``'s Redis, which need not be the broker's: a real worker whose
``REDIS_URL`` is a private ``redis-server`` keeps its singleton locks, beat's last successes and the lost-run
counts there, and none of them in the broker's Redis (which keeps only the queues)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from observability.beat import BEAT_LAST_SUCCESS_KEY
from observability.messaging.delivery_counter import KEY_PREFIX as LOST_RUNS_PREFIX
from tests import tasks
from tests.conftest import RESULT_TIMEOUT, wait_for
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def state_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def test_locks_beat_successes_and_lost_runs_go_to_redis_url_not_to_the_broker(
    start_worker, state_server: RedisServer, redis_client: redis.Redis
) -> None:
    queue = f"state-{uuid.uuid4().hex[:8]}"
    start_worker("-Q", queue, env={"REDIS_URL": state_server.url})
    state = state_server.client

    # A run published by beat notes its entry's success.
    entry = f"entry-{uuid.uuid4().hex[:6]}"
    tasks.echo.apply_async(("tick",), queue=queue, headers={"x-schedule-entry": entry}).get(timeout=RESULT_TIMEOUT)
    wait_for(lambda: state.hget(BEAT_LAST_SUCCESS_KEY, entry), what="beat's last success in REDIS_URL's Redis")
    assert redis_client.hget(BEAT_LAST_SUCCESS_KEY, entry) is None

    # A singleton's lock is held there while it runs.
    token = uuid.uuid4().hex
    running = tasks.overlapping.apply_async((token, 3.0), queue=queue)
    lock = f"observability:singleton:{tasks.overlapping.name}"
    wait_for(lambda: state.get(lock), what="the singleton's lock in REDIS_URL's Redis")
    assert redis_client.get(lock) is None
    assert running.get(timeout=RESULT_TIMEOUT) == "ran"
    assert state.get(lock) is None  # released after the run

    # A run lost with its process is counted there (the strategy reads the count back from the same Redis).
    killer = tasks.kills_its_worker.apply_async((uuid.uuid4().hex,), queue=queue)
    key = LOST_RUNS_PREFIX + killer.id
    counted = wait_for(lambda: state.get(key), timeout=60, what="the lost run counted in REDIS_URL's Redis")
    assert int(counted) >= 1
    assert redis_client.get(key) is None
