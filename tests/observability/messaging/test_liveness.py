"""Liveness that means consuming, from real prefork workers to a local OTLP receiver: the time of the last task
message received per queue moves when a message arrives and only then; the tasks a worker runs, reserves and
holds for a countdown are Celery's own counts; the oldest waiting message's age grows while no worker takes it;
and a worker behind a frozen broker connection stops receiving while its heartbeat - the export thread's
clock - goes on.

Each check reads one collection of the worker's main process (one OTLP export): the heartbeat in it is the
worker's clock at that collection, so ages and times compare on one clock.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from marketplace.celery import app as celery_app
from observability.telemetry import PUBLISHED_AT_HEADER
from tests import tasks
from tests.conftest import RESULT_TIMEOUT, TEST_BROKER, TEST_REDIS_URL, WorkerProcess, wait_for
from tests.otlp_receiver import OtlpReceiver

QUEUE = f"liveness-{uuid.uuid4().hex[:8]}"
#: Declared by the module's worker (as its maintenance queue) but not consumed by it, nor by any other worker.
UNCONSUMED = f"unconsumed-{uuid.uuid4().hex[:8]}"
PRIORITY_SEPARATOR = "\x06\x16"


@dataclass(frozen=True)
class Collection:
    """One export of a worker's main process: ``heartbeat`` is its clock then; ``values`` its gauge points."""

    export: int
    instance: str
    heartbeat: float
    values: dict[tuple[str, tuple[tuple[str, Any], ...]], float]

    def get(self, metric: str, **attributes: str) -> float | None:
        return self.values.get((metric, tuple(sorted(attributes.items()))))


def collections(otlp: OtlpReceiver) -> list[Collection]:
    """The exports that carry a heartbeat (only a worker's main process sends one), in the order received."""
    grouped: dict[int, list[Any]] = defaultdict(list)
    for point in list(otlp.points):
        grouped[point.export].append(point)
    found = []
    for export, points in sorted(grouped.items()):
        beats = [p.value for p in points if p.metric == "celery.worker.heartbeat"]
        if beats:
            values = {(p.metric, tuple(sorted(p.attributes.items()))): p.value for p in points if p.value is not None}
            instance = str(points[0].resource.get("service.instance.id"))
            found.append(Collection(export, instance, float(beats[0]), values))
    return found


def exports_so_far(otlp: OtlpReceiver) -> int:
    """The number of the last export received: a test's later collections have greater numbers."""
    return max((point.export for point in list(otlp.points)), default=0)


def next_collection(
    otlp: OtlpReceiver, after: int | Collection, condition: Callable[[Collection], bool], what: str
) -> Collection:
    """The first collection after ``after`` (an export number, or a collection), in export order, that meets
    ``condition`` (waiting for it)."""
    start = after.export if isinstance(after, Collection) else after
    found: Collection = wait_for(
        lambda: next((c for c in collections(otlp) if c.export > start and condition(c)), None),
        timeout=60,
        what=what,
    )
    return found


def received(collection: Collection, queue: str = QUEUE) -> float | None:
    return collection.get("celery.worker.last_received", queue=queue)


def tasks_in(collection: Collection, state: str) -> float | None:
    return collection.get("celery.worker.tasks", state=state)


def oldest_age(collection: Collection, queue: str, priority: str) -> float | None:
    return collection.get("celery.queue.oldest_message_age", queue=queue, priority=priority)


@pytest.fixture(scope="module")
def liveness_worker(start_module_worker, otlp) -> WorkerProcess:
    """One pool child and two messages prefetched: a held task runs, the next one waits reserved."""
    worker: WorkerProcess = start_module_worker(
        "-Q", QUEUE, "--concurrency=1",
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_METRIC_EXPORT_INTERVAL": "300",
             "CELERY_WORKER_PREFETCH_MULTIPLIER": "2", "CELERY_MAINTENANCE_QUEUE": UNCONSUMED},
    )  # fmt: skip
    return worker


def test_last_received_moves_when_a_message_arrives_and_only_then(liveness_worker, otlp):
    """Given a worker consuming one queue, its last-received time for that queue stays put from collection to
    collection while nothing arrives; a task message moves it to the time of arrival, then it stays put again."""
    before = next_collection(
        otlp, exports_so_far(otlp), lambda c: received(c) is not None, "a collection with the last-received gauge"
    )
    assert {key[1] for key in before.values if key[0] == "celery.worker.last_received"} == {(("queue", QUEUE),)}
    later = next_collection(otlp, before, lambda c: c.heartbeat >= before.heartbeat + 1, "a collection a second later")
    assert received(later) == received(before)

    published = time.time()
    tasks.echo.apply_async(("arrives",), queue=QUEUE).get(timeout=RESULT_TIMEOUT)
    arrived = next_collection(otlp, later, lambda c: (received(c) or 0) >= published, "the arrival in a collection")
    moved_to = received(arrived)
    assert moved_to is not None and published <= moved_to <= arrived.heartbeat

    quiet = next_collection(
        otlp, arrived, lambda c: c.heartbeat >= arrived.heartbeat + 1, "a collection a second later"
    )
    assert received(quiet) == moved_to


@pytest.mark.django_db(transaction=True)
def test_active_reserved_and_scheduled_are_the_workers_own_counts(liveness_worker, otlp):
    """Given two held tasks and a countdown on a worker with one pool child, then one task is active, one
    reserved (waiting for the child) and one scheduled - what ``inspect active/reserved/scheduled`` say - and
    once the held tasks are released, none is active or reserved. On RabbitMQ the countdown waits in the broker
    (native delayed delivery), so no worker holds it: none is scheduled."""
    scheduled = 0 if TEST_BROKER == "rabbitmq" else 1
    token = uuid.uuid4().hex
    start = exports_so_far(otlp)
    later = tasks.echo.apply_async(("later",), queue=QUEUE, countdown=30)
    try:
        for _ in range(2):
            tasks.held.apply_async((token,), queue=QUEUE)
        holding = next_collection(
            otlp,
            start,
            lambda c: (tasks_in(c, "active"), tasks_in(c, "reserved"), tasks_in(c, "scheduled")) == (1, 1, scheduled),
            f"one task active, one reserved and {scheduled} scheduled",
        )
        inspect = celery_app.control.inspect(destination=[liveness_worker.name], timeout=5)
        replies = [reply() or {} for reply in (inspect.active, inspect.reserved, inspect.scheduled)]
        assert [len(reply[liveness_worker.name]) for reply in replies] == [1, 1, scheduled]
        assert len(tasks.runs(token)) == 1  # the second waits for the only child
    finally:
        tasks.release(token, 2)
        celery_app.control.revoke(later.id)
    next_collection(
        otlp,
        holding,
        lambda c: (tasks_in(c, "active"), tasks_in(c, "reserved")) == (0, 0),
        "no task active or reserved once released",
    )
    assert len(tasks.runs(token)) == 2


@pytest.mark.redis_broker(reason="the oldest message's age is a Redis-only series (docs/metrics.md)")
def test_the_oldest_waiting_message_ages_while_no_worker_takes_it(liveness_worker, otlp, redis_client):
    """Given a queue the worker declares but does not consume, a message published to it shows as the oldest
    waiting, its age the worker's clock minus the message's publish time, growing collection after collection;
    a message of another priority has its own list and age; both are 0 once the lists are empty."""
    high_key = f"{UNCONSUMED}{PRIORITY_SEPARATOR}9"
    start = exports_so_far(otlp)
    try:
        tasks.echo.apply_async(("waits",), queue=UNCONSUMED)
        published_at = float(json.loads(redis_client.lindex(UNCONSUMED, -1))["headers"][PUBLISHED_AT_HEADER])
        first = next_collection(
            otlp, start, lambda c: (oldest_age(c, UNCONSUMED, "0") or 0) > 1, "an age of the waiting message"
        )
        assert oldest_age(first, UNCONSUMED, "0") == pytest.approx(first.heartbeat - published_at, abs=0.5)
        second = next_collection(
            otlp, first, lambda c: c.heartbeat >= first.heartbeat + 1, "a collection a second later"
        )
        grown = (oldest_age(second, UNCONSUMED, "0") or 0) - (oldest_age(first, UNCONSUMED, "0") or 0)
        assert grown == pytest.approx(second.heartbeat - first.heartbeat, abs=0.5)

        tasks.echo.apply_async(("waits too",), queue=UNCONSUMED, priority=9)
        assert redis_client.llen(high_key) == 1
        both = next_collection(
            otlp, second, lambda c: (oldest_age(c, UNCONSUMED, "9") or 0) > 0, "an age of the priority-9 message"
        )
        assert 0 < (oldest_age(both, UNCONSUMED, "9") or 0) < (oldest_age(both, UNCONSUMED, "0") or 0)
        assert oldest_age(both, UNCONSUMED, "3") == 0
    finally:
        redis_client.delete(UNCONSUMED, high_key)
    next_collection(
        otlp,
        start,
        lambda c: oldest_age(c, UNCONSUMED, "0") == 0 and oldest_age(c, UNCONSUMED, "9") == 0,
        "ages of 0 once the lists are empty",
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.redis_broker(reason="a frozen Redis connection (BRPOP)")
def test_a_worker_behind_a_frozen_broker_connection_stops_receiving_while_its_heartbeat_goes_on(
    proxy, start_worker, otlp_receiver, redis_client: redis.Redis
):
    """Given a worker whose broker connection goes through a proxy, when the proxy freezes it (no reset, no
    close), then collections go on with a fresh heartbeat while the last-received time stays before a message
    published meanwhile - a live-looking worker that consumes nothing - until the consumer reconnects (kombu's
    BRPOP health check, slowed here to 30 s so that the stall is long) and the message arrives."""
    url = proxy.url(TEST_REDIS_URL)
    queue = f"frozen-liveness-{uuid.uuid4().hex[:8]}"
    worker = start_worker(
        "-Q", queue,
        env={"CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url, "REDIS_HEALTH_CHECK_INTERVAL_SECONDS": "30",
             "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint, "OTEL_METRIC_EXPORT_INTERVAL": "300"},
    )  # fmt: skip
    first_published = time.time()
    tasks.echo.apply_async((uuid.uuid4().hex,), queue=queue)
    consuming = next_collection(
        otlp_receiver, 0, lambda c: (received(c, queue) or 0) >= first_published, "the first arrival"
    )

    proxy.freeze()
    wait_for(lambda: not proxy.holds_blocked_brpop(redis_client), timeout=10, what="the frozen BRPOP to time out")
    second = uuid.uuid4().hex
    published = time.time()
    tasks.echo.apply_async((second,), queue=queue)  # published by this process, straight to Redis

    stalled = next_collection(
        otlp_receiver, consuming, lambda c: c.heartbeat >= published + 3, "a collection 3 s after the publish"
    )
    assert (received(stalled, queue) or 0) < published <= stalled.heartbeat - 3
    assert received(stalled, queue) == received(consuming, queue)

    wait_for(lambda: tasks.runs(second), timeout=120, what="the consumer to reconnect and run the second task")
    recovered = next_collection(
        otlp_receiver, stalled, lambda c: (received(c, queue) or 0) >= published, "the arrival after the reconnection"
    )
    stall_seconds = (received(recovered, queue) or 0) - published
    print(f"heartbeat fresh, nothing received for {stall_seconds:.1f} s behind the frozen connection")
    assert worker.alive()
