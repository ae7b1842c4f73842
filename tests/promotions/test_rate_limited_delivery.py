"""The channel rate limit and throttle pause end to end: two real workers (four processes) deliver through the
local SMTP server, which records when each message arrives and can answer with throttling replies.

Each process acquires its send from the bucket when it is ready to send (one message an acquisition at this
rate) and sends it before it asks for the next, so a 1 s window of arrival times holds at most what the limiter
granted in it (``rate``: it counts the last second's grants) plus the sends granted before it and still on their
way when it opened, however late the machine ran them: at most one per process. That is the tolerance below,
exact for the design, not a margin for a slow machine."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.db.models import Max
from django.utils import timezone

from observability.redis_client import state_redis
from promotions.fanout import promos_fan_out
from promotions.models import Notification
from promotions.tasks import deliver_notification_batch
from tests.conftest import one_queue, wait_for
from tests.factories import ProductFactory, PromoFactory, SubscriptionFactory
from tests.smtp import max_per_window

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "rate-limited"
RATE, BURST, PROCESSES, BATCH = 40, 1, 4, 20
PAUSE = 1.0


@pytest.fixture(scope="module")
def limited_workers(start_module_worker) -> None:
    env = {
        "NOTIFICATION_RATE_LIMIT_PER_SECOND": str(RATE),
        "NOTIFICATION_RATE_LIMIT_BURST": str(BURST),
        "NOTIFICATION_BATCH_SIZE": str(BATCH),
        "NOTIFICATION_THROTTLE_PAUSE_SECONDS": str(PAUSE),
        "NOTIFICATION_THROTTLE_PAUSE_MAX_SECONDS": "2",
        **one_queue(QUEUE),
    }
    for _ in range(PROCESSES // 2):
        start_module_worker("-Q", QUEUE, env=env)


@pytest.fixture(autouse=True)
def _fresh_channel(smtp_sink) -> Iterator[None]:
    """An empty sink before, and no bucket or pause left after: the session's unlimited worker shares Redis."""
    smtp_sink.clear()
    yield
    client = state_redis()  # where the rate limiter keeps them (REDIS_URL), whichever the broker
    for key in client.scan_iter("notifications:ratelimit:*"):
        client.delete(key)


def _queue(count):
    product = ProductFactory()
    SubscriptionFactory.create_batch(count, product=product)
    promo = PromoFactory(product=product, status="active", starts_at=timezone.now() - timedelta(seconds=1))
    run = promos_fan_out(promo_ids=[promo.pk], now=timezone.now(), on_batch=lambda batch: None, budget_seconds=3600)
    assert run.queued == count
    for _ in range(count // BATCH):
        deliver_notification_batch.apply_async(queue=QUEUE)
    return [str(key) for key in Notification.objects.values_list("idempotency_key", flat=True)]


def _all_sent(count: int) -> bool:
    return Notification.objects.filter(status="sent").count() == count


def test_four_processes_never_exceed_the_channels_rate_and_send_each_once(limited_workers, smtp_sink):
    """120 notifications in 6 batches run side by side by four processes at a 40/s limit: no 1 s window of what
    the SMTP server received holds more than the limit (+ the one granted send per process in flight), the
    backlog takes the time the limit sets, and every notification arrives exactly once."""
    keys = _queue(120)

    wait_for(lambda: _all_sent(120), what="120 sent")

    assert smtp_sink.deliveries_by_key() == dict.fromkeys(keys, 1)
    arrivals = smtp_sink.received_at
    print(f"max per 1 s window: {max_per_window(arrivals)} (limit {RATE})")
    assert max_per_window(arrivals) <= RATE + PROCESSES
    # Machine-independent: a slow machine only stretches it.
    assert max(arrivals) - min(arrivals) >= (120 - BURST - PROCESSES) / RATE * 0.99


@pytest.mark.parametrize(
    "reply",
    ["451 4.7.1 rate limit exceeded, try again later", "421 4.7.0 too many messages, closing connection"],
    ids=["451", "421"],
)
def test_a_throttling_answer_pauses_the_channel_for_every_worker_and_loses_nothing(limited_workers, smtp_sink, reply):
    """The SMTP server answers three messages with a throttling reply: the channel pauses for every process (at
    most the sends already granted, one per process, arrive during the pause), then every notification is
    delivered exactly once, each at its first attempt - a throttled message is sent again, not counted as
    failed."""
    smtp_sink.throttle(3, reply)
    keys = _queue(60)

    wait_for(lambda: _all_sent(60), what="60 sent after the throttle")

    assert smtp_sink.deliveries_by_key() == dict.fromkeys(keys, 1)
    assert len(smtp_sink.throttled_at) == 3
    assert Notification.objects.aggregate(Max("attempts"))["attempts__max"] == 1
    first = smtp_sink.throttled_at[0]
    during_pause = [at for at in smtp_sink.received_at if first < at < first + PAUSE * 0.9]
    # Unpaused, 36 would arrive in that window. Paused: the sends already granted (one per process) and what the
    # others are granted while the throttled worker is still reading its answer (up to 0.25 s on a loaded machine).
    assert len(during_pause) <= PROCESSES + RATE * 0.25, during_pause
