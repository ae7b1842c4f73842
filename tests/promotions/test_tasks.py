"""The periodic tasks, run by a real prefork worker against the test database and Redis."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from promotions.models import FlashPromo, Notification, PromoStatus, Subscription
from promotions.tasks import (
    check_active_promos,
    cleanup_expired_promos,
    deliver_notification_batch,
    process_notification_queue,
    sync_promo,
)
from tests.conftest import RESULT_TIMEOUT, ROOT, live_worker_log_lines, wait_for
from tests.factories import ProductFactory, PromoFactory, SubscriptionFactory
from tests.smtp import REFUSED_PREFIX

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("celery_worker")]


@pytest.fixture(autouse=True)
def _empty_sink(smtp_sink):
    smtp_sink.clear()


def test_check_active_promos_returns_its_summary():
    """The seed's debugging recipe: ``check_active_promos.delay().get()`` returns the sweep's counts."""
    product = ProductFactory()
    SubscriptionFactory.create_batch(3, product=product)
    PromoFactory(product=product, starts_at=timezone.now() - timedelta(seconds=1))

    summary = check_active_promos.delay().get(timeout=RESULT_TIMEOUT)

    assert summary == {
        "activated": 1, "ended": 0, "skipped": 0, "fan_outs_published": 1, "countdowns_scheduled": 0,
    }  # fmt: skip
    wait_for(lambda: Notification.objects.filter(status="sent").count() == 3, what="the three notifications sent")


def test_the_sweep_fans_out_again_a_promo_whose_fan_out_was_lost():
    """An active promo still without notifications two minutes after going live (its fan-out message was
    lost) gets them from the next sweep, and its subscribers are notified."""
    product = ProductFactory()
    SubscriptionFactory.create_batch(2, product=product)
    earlier = timezone.now() - timedelta(minutes=3)
    promo = PromoFactory(product=product, status="active", starts_at=earlier, activated_at=earlier)

    assert check_active_promos.delay().get(timeout=RESULT_TIMEOUT)["fan_outs_published"] == 1

    wait_for(lambda: Notification.objects.filter(promo=promo, status="sent").count() == 2, what="the notifications")
    promo.refresh_from_db()
    assert promo.notifications_queued


def test_staggered_promos_go_live_at_their_start_by_countdown():
    """50 promos starting at staggered times each go live at ``starts_at`` - never before, and not at the next
    minute's sweep: no beat runs here, so only the countdowns the first sweep published can activate them.
    How close to the start (the goal is p99 <= 1 s) is measured by the benchmark (``bench.run --only lag``),
    not here: a loaded machine stretches it."""
    product = ProductFactory()
    start = timezone.now() + timedelta(seconds=3)
    promos = [PromoFactory(product=product, starts_at=start + timedelta(milliseconds=150 * n)) for n in range(50)]
    check_active_promos.delay().get(timeout=RESULT_TIMEOUT)

    wait_for(
        lambda: not FlashPromo.objects.filter(status=PromoStatus.SCHEDULED).exists(),
        timeout=30,
        what="all promos to go live",
    )
    lags = [
        (p.activated_at - p.starts_at).total_seconds() for p in FlashPromo.objects.filter(pk__in=[p.pk for p in promos])
    ]
    print(f"activation lag over {len(lags)} promos: median {statistics.median(lags):.3f} s, max {max(lags):.3f} s")
    assert all(lag >= 0 for lag in lags), lags


def test_a_thousand_subscribers_are_notified_at_activation_none_twice(smtp_sink):
    """On activation, delivery starts at once - no queue sweep runs here (no beat) - and 1,000 emails reach the
    SMTP server, each exactly once. How fast is the benchmark's (``bench.run --only notifications``)."""
    product = ProductFactory()
    SubscriptionFactory.create_batch(1000, product=product)
    promo = PromoFactory(product=product, starts_at=timezone.now() + timedelta(seconds=2))
    check_active_promos.delay().get(timeout=RESULT_TIMEOUT)

    wait_for(lambda: FlashPromo.objects.get(pk=promo.pk).activated_at, what="activation")
    activated_at = FlashPromo.objects.get(pk=promo.pk).activated_at
    wait_for(lambda: Notification.objects.filter(status="sent").count() == 1000, what="1,000 sent")
    last_sent = Notification.objects.order_by("-sent_at").values_list("sent_at", flat=True).first()

    print(f"1,000 notifications sent {(last_sent - activated_at).total_seconds():.2f} s after activation")
    keys = smtp_sink.deliveries_by_key()
    assert len(keys) == 1000
    assert max(keys.values()) == 1


def test_two_workers_draining_one_queue_send_each_notification_once(start_worker, smtp_sink):
    """With a second worker (four processes in all) claiming batches side by side, nothing is sent twice."""
    second = start_worker()
    product = ProductFactory()
    SubscriptionFactory.create_batch(2000, product=product)
    PromoFactory(product=product, starts_at=timezone.now() - timedelta(seconds=1))
    check_active_promos.delay().get(timeout=RESULT_TIMEOUT)
    # Extra batches race for the same rows: SKIP LOCKED must keep them apart.
    for _ in range(10):
        deliver_notification_batch.delay()

    wait_for(lambda: Notification.objects.filter(status="sent").count() == 2000, timeout=30, what="2,000 sent")

    keys = smtp_sink.deliveries_by_key()
    assert len(keys) == 2000 and max(keys.values()) == 1
    assert "deliver_notification_batch" in second.log()  # the second worker did take part


def test_a_dead_workers_claims_are_reclaimed_after_the_lease(smtp_sink):
    """A notification left in ``sending`` past its lease goes back to the queue and is delivered."""
    product = ProductFactory()
    subscription = SubscriptionFactory(product=product)
    promo = PromoFactory(product=product, status="active", starts_at=timezone.now() - timedelta(minutes=1))
    stuck = Notification.objects.create(
        promo=promo, subscription=subscription, status="sending", attempts=1,
        next_attempt_at=timezone.now(), lease_expires_at=timezone.now() - timedelta(seconds=1),
    )  # fmt: skip

    summary = process_notification_queue.delay().get(timeout=RESULT_TIMEOUT)

    assert summary["reclaimed"] == 1
    wait_for(lambda: Notification.objects.get(pk=stuck.pk).status == "sent", what="redelivery")
    assert smtp_sink.deliveries_by_key()[str(stuck.idempotency_key)] == 1
    assert Notification.objects.get(pk=stuck.pk).attempts == 2


def test_cleanup_expired_promos_runs_on_the_worker():
    """The hourly cleanup deletes long-finished promos and returns what it deleted."""
    old = timezone.now() - timedelta(days=400)
    PromoFactory(status="ended", starts_at=old - timedelta(hours=1), ends_at=old, ended_at=old)

    summary = cleanup_expired_promos.delay().get(timeout=RESULT_TIMEOUT)

    assert summary["promos_deleted"] == 1
    assert not FlashPromo.objects.exists()


def test_the_seed_shell_recipe_works_from_manage_py_shell(worker_env):
    """``python manage.py shell`` then ``check_active_promos.delay().get()`` prints the summary."""
    recipe = (
        "from promotions.tasks import check_active_promos\n"
        "result = check_active_promos.delay()\n"
        "print(result.get(timeout=15))\n"
    )
    shell = subprocess.run(
        [sys.executable, "manage.py", "shell"], input=recipe, capture_output=True, text=True,
        cwd=ROOT, env=worker_env, timeout=60, check=True,
    )  # fmt: skip
    assert "'activated': 0" in shell.stdout and "'countdowns_scheduled'" in shell.stdout


def test_notifications_of_a_cancelled_promo_are_not_sent(smtp_sink):
    """Pending notifications of a promo cancelled before delivery are never claimed; the queue sweep marks
    them failed with the reason."""
    product = ProductFactory()
    subscription = SubscriptionFactory(product=product)
    promo = PromoFactory(product=product, status="cancelled", starts_at=timezone.now() - timedelta(minutes=1))
    notification = Notification.objects.create(promo=promo, subscription=subscription, next_attempt_at=timezone.now())

    assert deliver_notification_batch.apply_async(ignore_result=False).get(timeout=RESULT_TIMEOUT)["claimed"] == 0
    process_notification_queue.delay().get(timeout=RESULT_TIMEOUT)

    notification.refresh_from_db()
    assert (notification.status, notification.last_error) == ("failed", "the promo is no longer active")
    assert str(notification.idempotency_key) not in smtp_sink.deliveries_by_key()


# --- Moved and cancelled promos: their old countdowns do nothing ---------------------------------------------


def _countdowns_held(promo_id: int) -> list[str]:
    """The ``due_at`` of each ``sync_promo`` countdown for ``promo_id`` published and not yet run, from the
    ``promo.countdown_published`` and ``promo.countdown_ran`` lines of every running worker (tests before these
    may have started more than the shared one): the same on both brokers, wherever the countdown waits - in a
    worker's memory on Redis, in the delayed-delivery queues on RabbitMQ."""
    held: Counter[str] = Counter()
    for line in live_worker_log_lines():
        if '"promo.countdown_' in line and (event := json.loads(line)).get("promo_id") == promo_id:
            held[event["due_at"]] += 1 if event["event"] == "promo.countdown_published" else -1
    return sorted(held.elements())


def _create_promo(staff_api: APIClient, starts_at: datetime) -> int:
    product = ProductFactory.create()
    SubscriptionFactory.create_batch(2, product=product)
    body = {
        "product_id": product.pk, "title": "Kettles", "discount_percent": 30,
        "starts_at": starts_at.isoformat(), "ends_at": (starts_at + timedelta(minutes=5)).isoformat(),
    }  # fmt: skip
    response = staff_api.post("/api/promos", body, format="json")
    assert response.status_code == 201, response.content
    return int(response.json()["id"])


def _move(staff_api: APIClient, promo_id: int, starts_at: datetime) -> None:
    body = {"starts_at": starts_at.isoformat(), "ends_at": (starts_at + timedelta(minutes=5)).isoformat()}
    response = staff_api.patch(f"/api/promos/{promo_id}", body, format="json")
    assert response.status_code == 200, response.content


def test_a_promo_moved_later_goes_live_at_its_new_start_not_the_old_one(staff_api):
    """Given a promo whose countdown for its start 5 s ahead is pending, when its start is moved 3 s later,
    then the old countdown fires and changes nothing, and the promo goes live at the new start."""
    old_start = timezone.now() + timedelta(seconds=5)
    promo_id = _create_promo(staff_api, old_start)
    wait_for(
        lambda: _countdowns_held(promo_id) == [old_start.isoformat()],
        what=f"the countdown {old_start.isoformat()}",
    )

    new_start = old_start + timedelta(seconds=3)
    _move(staff_api, promo_id, new_start)
    wait_for(
        lambda: _countdowns_held(promo_id) == [new_start.isoformat()],
        what="the old countdown to fire, the new one held",
    )

    assert FlashPromo.objects.get(pk=promo_id).status == PromoStatus.SCHEDULED
    promo = wait_for(lambda: FlashPromo.objects.filter(pk=promo_id, status="active").first(), what="activation")
    # Not at the old start (3 s earlier). How close to the new one is the benchmark's to say (``--only lag``).
    assert promo.activated_at >= new_start, (promo.activated_at - new_start).total_seconds()


def test_a_promo_moved_earlier_goes_live_at_its_new_start_not_at_the_old_one(staff_api):
    """Given a promo whose countdown for its start 10 s ahead is pending, when its start is moved to 2 s ahead,
    then a countdown for the new start is published at once and it goes live at it (not at the old start; no
    beat runs here, so not at a beat tick either); the old countdown fires later and changes nothing."""
    old_start = timezone.now() + timedelta(seconds=10)
    promo_id = _create_promo(staff_api, old_start)
    wait_for(lambda: _countdowns_held(promo_id), what="the countdown for the old start")

    new_start = timezone.now() + timedelta(seconds=2)
    _move(staff_api, promo_id, new_start)

    promo = wait_for(lambda: FlashPromo.objects.filter(pk=promo_id, status="active").first(), what="activation")
    assert new_start <= promo.activated_at < old_start, (promo.activated_at - new_start).total_seconds()
    wait_for(lambda: not _countdowns_held(promo_id), what="the old countdown to fire")
    assert FlashPromo.objects.filter(pk=promo_id, status="active", activated_at=promo.activated_at).exists()


def test_a_cancelled_promos_countdown_fires_and_changes_nothing_sends_nothing(staff_api, smtp_sink):
    """Given a promo with subscribers whose countdown for its start 5 s ahead is pending, when it is
    cancelled, then the countdown fires and leaves it cancelled: never activated, no notification written or sent."""
    start = timezone.now() + timedelta(seconds=5)
    promo_id = _create_promo(staff_api, start)
    wait_for(lambda: _countdowns_held(promo_id), what="the countdown")

    assert staff_api.post(f"/api/promos/{promo_id}/cancel").status_code == 200
    wait_for(lambda: not _countdowns_held(promo_id), what="the countdown to fire")
    check_active_promos.delay().get(timeout=RESULT_TIMEOUT)
    process_notification_queue.delay().get(timeout=RESULT_TIMEOUT)

    promo = FlashPromo.objects.get(pk=promo_id)
    assert (promo.status, promo.activated_at, promo.notifications_queued) == ("cancelled", None, False)
    assert not Notification.objects.filter(promo_id=promo_id).exists()
    assert smtp_sink.deliveries_by_key() == {}


def test_a_countdown_for_a_time_the_promo_no_longer_has_does_nothing():
    """``sync_promo(promo_id, due_at)`` acts only while ``due_at`` is still the promo's start or end: a stale
    one neither activates a due promo nor publishes itself again; the current one does both jobs."""
    now = timezone.now()
    due = PromoFactory(starts_at=now - timedelta(seconds=1))
    upcoming = PromoFactory(starts_at=now + timedelta(seconds=3))
    nothing = {"activated": 0, "ended": 0, "skipped": 0, "fan_outs_published": 0, "countdowns_scheduled": 0}
    stale = (now - timedelta(minutes=5)).isoformat()

    assert sync_promo.apply_async((due.pk, stale), ignore_result=False).get(timeout=RESULT_TIMEOUT) == nothing
    assert sync_promo.apply_async((upcoming.pk, stale), ignore_result=False).get(timeout=RESULT_TIMEOUT) == nothing
    assert FlashPromo.objects.get(pk=due.pk).status == PromoStatus.SCHEDULED

    current = (due.pk, due.starts_at.isoformat())
    assert sync_promo.apply_async(current, ignore_result=False).get(timeout=RESULT_TIMEOUT)["activated"] == 1
    early_args = (upcoming.pk, upcoming.starts_at.isoformat())
    early = sync_promo.apply_async(early_args, ignore_result=False).get(timeout=RESULT_TIMEOUT)
    assert early["countdowns_scheduled"] == 1  # it came early: published again for the start, which activates it
    wait_for(lambda: FlashPromo.objects.filter(pk=upcoming.pk, status="active").exists(), what="activation")


def _notify(promo: FlashPromo, subscriptions: list[Subscription]) -> None:
    """Pending notifications of ``promo`` for ``subscriptions``, due now."""
    Notification.objects.bulk_create(
        Notification(promo=promo, subscription=subscription, next_attempt_at=timezone.now())
        for subscription in subscriptions
    )


def _active_promo_with_pending_notifications(count: int, **fields: object) -> FlashPromo:
    product = ProductFactory()
    promo = PromoFactory.create(
        product=product, status="active", starts_at=timezone.now() - timedelta(minutes=1), **fields
    )
    _notify(promo, SubscriptionFactory.create_batch(count, product=product))
    return promo


def _count(status: str) -> int:
    return Notification.objects.filter(status=status).count()


@pytest.fixture(scope="module")
def delivery_worker(start_module_worker):
    """A worker of its own (queue ``test-deliveries``), so the tests below read the log of the one that ran
    their batches (the session's workers share the default queue)."""
    return start_module_worker("-Q", DELIVERY_QUEUE)


DELIVERY_QUEUE = "test-deliveries"


@pytest.fixture
def slow_smtp(smtp_sink):
    """The SMTP sink answering each message after 0.1 s: a batch of 30 takes about 3 s."""
    smtp_sink.reply_delay_seconds = 0.1
    yield smtp_sink
    smtp_sink.reply_delay_seconds = 0.0


def test_one_message_that_cannot_be_sent_fails_alone_and_its_error_names_no_address(smtp_sink, delivery_worker):
    """In one batch: a refused mailbox, an address Django cannot encode (a 64-character label) and a promo title
    with a line break (older rows may hold one). The two addresses fail at once - masked in the stored error and
    in the log - and the others are sent once, their subject on one line."""
    promo = _active_promo_with_pending_notifications(3, title="Flash\nSale")
    refused = SubscriptionFactory(product=promo.product, email=f"{REFUSED_PREFIX}.jane@example.com")
    unencodable = SubscriptionFactory(product=promo.product, email=f"joe@{'x' * 64}.example.com")
    _notify(promo, [refused, unencodable])

    summary = deliver_notification_batch.apply_async(queue=DELIVERY_QUEUE, ignore_result=False).get(
        timeout=RESULT_TIMEOUT
    )

    assert summary == {"claimed": 5, "sent": 3, "retrying": 0, "failed": 2}
    errors = dict(Notification.objects.filter(status="failed").values_list("subscription__email", "last_error"))
    assert "r***@example.com" in errors[refused.email] and refused.email not in errors[refused.email]
    assert errors[unencodable.email].startswith("UnicodeError: ")
    assert max(smtp_sink.deliveries_by_key().values()) == 1
    assert set(smtp_sink.subjects()) == {f"20% off {promo.product.name}: Flash Sale"}
    wait_for(lambda: '"notifications.batch_not_all_sent"' in delivery_worker.log(), what="the batch's warning line")
    assert refused.email not in delivery_worker.log()


def test_a_slow_batch_records_its_outcomes_as_it_goes(slow_smtp):
    """A batch that takes seconds writes what it sent at least every second, while it still runs: a worker
    killed mid-batch leaves at most a second of sent messages to be sent again, not the whole batch."""
    _active_promo_with_pending_notifications(30)

    deliver_notification_batch.delay()

    wait_for(lambda: _count("sent") and _count("sending"), timeout=15, what="sent rows recorded mid-batch")
    wait_for(lambda: _count("sent") == 30, what="30 sent")
    assert max(slow_smtp.deliveries_by_key().values()) == 1


def test_a_batch_stopped_by_its_soft_time_limit_hands_back_what_it_did_not_send(slow_smtp, delivery_worker):
    """The soft time limit interrupts a batch mid-send: what was sent is recorded as sent, the rest goes back to
    the queue at once (not after the 6-minute lease), and the task's retries deliver it. Only the message in
    flight at each interruption may reach the provider twice."""
    _active_promo_with_pending_notifications(30)
    log_start = len(delivery_worker.log())

    deliver_notification_batch.apply_async(soft_time_limit=1, queue=DELIVERY_QUEUE)  # its retries go there too

    # Each 1 s run sends about 9 of the 30 (0.1 s a message); the retries wait 2, 4, 8, 16 s (half to all of it):
    # 30 s or more on a busy machine. Still far below the 6-minute lease the hand-back must not wait for.
    wait_for(lambda: _count("sent") == 30, timeout=120, what="30 sent by the interrupted run and its retries")
    lines = [json.loads(line) for line in delivery_worker.log()[log_start:].splitlines() if '"task.finished"' in line]
    interrupted = sum(
        line["task_name"] == "promotions.tasks.deliver_notification_batch" and line["outcome"] == "retried"
        for line in lines
    )
    deliveries = slow_smtp.deliveries_by_key()
    assert interrupted >= 1
    assert len(deliveries) == 30
    assert sum(count - 1 for count in deliveries.values()) <= interrupted
    # The rows an interruption handed back untried got their attempt back: only the one in flight used two.
    attempts = Notification.objects.values_list("attempts", flat=True)
    assert sum(count - 1 for count in attempts) <= interrupted
