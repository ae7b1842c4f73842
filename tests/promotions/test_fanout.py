"""The fan-out: keyset batches of bounded size, durable progress, one row per subscriber whatever runs twice."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from promotions import fanout, notifications, selectors, services
from promotions.models import FlashPromo, Notification, PromoStatus, Subscription
from promotions.tasks import queue_promo_notifications
from tests.conftest import one_queue, wait_for
from tests.factories import ProductFactory, PromoFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


def _live_promo(subscribers: int, **fields: object) -> FlashPromo:
    """An active promo whose product has ``subscribers`` subscriptions (and another product's, never notified)."""
    product = ProductFactory.create()
    Subscription.objects.bulk_create(
        Subscription(product=product, email=f"s{n}@example.com", confirmed_at=timezone.now())
        for n in range(subscribers)
    )
    SubscriptionFactory.create_batch(2)  # other products' subscribers, interleaved ids
    now = timezone.now()
    return PromoFactory.create(
        product=product, status=PromoStatus.ACTIVE, starts_at=now - timedelta(seconds=1), activated_at=now, **fields
    )


def _queued_once(promo: FlashPromo) -> bool:
    rows = list(Notification.objects.filter(promo=promo).values_list("subscription_id", flat=True))
    expected = set(promo.product.subscriptions.values_list("id", flat=True))
    return len(rows) == len(set(rows)) and set(rows) == expected


def _statements(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]


def test_batches_bound_the_rows_per_statement_and_walk_every_subscriber_once():
    """7 subscribers in batches of 3: three transactions of 3, 3 and 1 rows, four statements each, the cursor
    moving with them; the promo is marked queued by the last batch only."""
    promo = _live_promo(7)
    batches = []
    for _ in range(3):
        with CaptureQueriesContext(connection) as queries:
            batches.append(fanout.promo_fan_out_batch(promo_id=promo.pk, now=timezone.now(), batch_size=3))
        assert len(_statements(queries)) == 4  # batch lock, read the cursor, INSERT ... SELECT, move the cursor
        promo.refresh_from_db()
        assert promo.notifications_queued == (not batches[-1].more)
        assert promo.fan_out_cursor == max(Notification.objects.filter(promo=promo).values_list("subscription_id"))[0]

    assert [(b.queued, b.more) for b in batches] == [(3, True), (3, True), (1, False)]
    assert _queued_once(promo)
    assert fanout.promo_fan_out_batch(promo_id=promo.pk, now=timezone.now()).skipped == "stopped"


def test_the_first_batch_is_one_delivery_batch_so_delivery_starts_at_once(settings):
    """Batches of 3 with delivery batches of 2: the walk's first batch takes 2 (it commits sooner), then 3s."""
    settings.NOTIFICATION_BATCH_SIZE = 2
    promo = _live_promo(7)
    sizes: list[int] = []

    fanout.promos_fan_out(
        promo_ids=[promo.pk], now=timezone.now(), on_batch=lambda batch: sizes.append(batch.queued), batch_size=3
    )

    assert sizes == [2, 3, 2] and _queued_once(promo)


def test_a_walk_of_an_exact_multiple_of_the_batch_size_ends_with_an_empty_batch():
    """6 subscribers in batches of 3: the third batch finds none and marks the promo queued."""
    promo = _live_promo(6)
    run = fanout.promos_fan_out(promo_ids=[promo.pk], now=timezone.now(), on_batch=lambda _: None, batch_size=3)

    assert (run.queued, run.batches, run.unfinished) == (6, 3, [])
    promo.refresh_from_db()
    assert promo.notifications_queued and _queued_once(promo)


def test_each_committed_batch_is_reported_and_promos_take_turns():
    """Two promos of one chunk: each gets its first batch before either gets its second (round robin), and the
    callback hears every batch's row count as it commits."""
    first, second = _live_promo(4), _live_promo(2)
    order: list[int] = []
    original = fanout.promo_fan_out_batch

    def spy(*, promo_id: int, **kwargs: Any) -> fanout.FanOutBatch:
        order.append(promo_id)
        batch: fanout.FanOutBatch = original(promo_id=promo_id, **kwargs)
        return batch

    reported: list[fanout.FanOutBatch] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fanout, "promo_fan_out_batch", spy)
        run = fanout.promos_fan_out(
            promo_ids=[first.pk, second.pk], now=timezone.now(), on_batch=reported.append, batch_size=2
        )

    assert order == [first.pk, second.pk, first.pk, second.pk, first.pk]
    assert [b.queued for b in reported] == [2, 2, 2, 0, 0] and run.queued == 6
    # Each batch names the subscriptions it wrote: its deliveries' scope (notifications.BatchScope).
    for batch in reported:
        rows = Notification.objects.filter(promo_id=batch.promo_id, subscription_id__gt=batch.after)
        assert rows.filter(subscription_id__lte=batch.through).count() == batch.queued


def test_a_delivery_batch_published_for_a_fan_out_batch_claims_that_batchs_rows_only(settings):
    """Two fan-out batches of 3: the delivery batch of the second, though it may claim 10 and the first's rows
    are due too, claims the second's 3; the first's then claims its own. Unscoped, two batches side by side
    lost rows (``notifications.BatchScope`` says how)."""
    settings.NOTIFICATION_BATCH_SIZE = 3
    promo = _live_promo(6)
    first, second = (fanout.promo_fan_out_batch(promo_id=promo.pk, now=timezone.now(), batch_size=3) for _ in "12")
    subscriptions = list(promo.product.subscriptions.order_by("id").values_list("id", flat=True))
    assert (first.after, first.through, second.after, second.through) == (
        0, subscriptions[2], subscriptions[2], subscriptions[5],
    )  # fmt: skip

    def deliver(batch: fanout.FanOutBatch) -> set[int]:
        scope = notifications.BatchScope(batch.promo_id, after=batch.after, through=batch.through)
        assert notifications.notifications_deliver_batch(now=timezone.now(), batch_size=10, scope=scope).sent == 3
        return set(Notification.objects.filter(status="sent").values_list("subscription_id", flat=True))

    assert deliver(second) == set(subscriptions[3:])
    assert deliver(first) == set(subscriptions)


def test_a_delivery_batch_with_part_of_a_scope_is_refused_with_what_it_needs():
    """A scope without its range would claim nothing (or, read loosely, every row of the promo): refused in one
    line, which the base task dead-letters; the rows stay pending for the queue sweep."""
    from promotions.tasks import deliver_notification_batch

    with pytest.raises(ValueError, match="needs promo_id, after_subscription and through_subscription"):
        deliver_notification_batch.run(promo_id=1, after_subscription=0)


def test_a_run_past_its_budget_returns_the_promos_left_and_a_later_run_finishes_them():
    """A zero budget still runs one batch (every run makes progress), then hands back what is left."""
    promo, other = _live_promo(5), _live_promo(1)
    now = timezone.now()

    run = fanout.promos_fan_out(promo_ids=[promo.pk, other.pk], now=now, on_batch=id, batch_size=2, budget_seconds=0)

    assert (run.queued, run.unfinished) == (2, [other.pk, promo.pk])
    rest = fanout.promos_fan_out(promo_ids=run.unfinished, now=now, on_batch=id, batch_size=2)
    assert rest.unfinished == [] and _queued_once(promo) and _queued_once(other)


def test_a_fan_out_resumed_after_a_crash_mid_batch_writes_no_row_twice():
    """One batch committed, the next rolled back by a crash (here an error before its commit): the resumed
    walk starts at the committed cursor and every subscriber has exactly one row."""
    promo = _live_promo(10)
    fanout.promo_fan_out_batch(promo_id=promo.pk, now=timezone.now(), batch_size=4)

    def crash_before_the_commit() -> None:
        with transaction.atomic():
            fanout.promo_fan_out_batch(promo_id=promo.pk, now=timezone.now(), batch_size=4)
            raise RuntimeError("worker lost before the commit")

    with pytest.raises(RuntimeError):
        crash_before_the_commit()
    assert Notification.objects.filter(promo=promo).count() == 4

    run = fanout.promos_fan_out(promo_ids=[promo.pk], now=timezone.now(), on_batch=id, batch_size=4)

    assert run.queued == 6 and _queued_once(promo)


def test_a_promo_cancelled_or_ended_mid_fan_out_stops_being_fanned_out():
    """After one batch the promo is cancelled (another one passes its end): the next runs write nothing, and the
    sweep's recovery does not pick the cancelled one up."""
    cancelled, ended = _live_promo(6), _live_promo(6)
    for promo in (cancelled, ended):
        fanout.promo_fan_out_batch(promo_id=promo.pk, now=timezone.now(), batch_size=2)
    services.promo_cancel(promo_id=cancelled.pk, now=timezone.now())
    FlashPromo.objects.filter(pk=ended.pk).update(ends_at=timezone.now())

    run = fanout.promos_fan_out(promo_ids=[cancelled.pk, ended.pk], now=timezone.now(), on_batch=id, batch_size=2)

    assert (run.queued, run.batches) == (0, 0)
    assert Notification.objects.count() == 4
    # The ended one is the sweep's to end, in the same run before its recovery looks.
    later = timezone.now() + timedelta(hours=1)
    assert selectors.promos_awaiting_fan_out(idle_since=later, limit=10) == [ended.pk]


def test_promos_awaiting_fan_out_are_the_active_unfinished_ones_idle_past_the_grace():
    """The sweep's recovery list: active, not queued, and neither activated nor advanced since the cut-off -
    a fan-out that stopped midway (its worker died) is found; one still making progress is not."""
    now = timezone.now()
    earlier = now - timedelta(minutes=5)
    never = PromoFactory(status="active", activated_at=earlier, starts_at=earlier)
    stopped = PromoFactory(
        status="active", activated_at=earlier - timedelta(minutes=1), starts_at=earlier, fan_out_cursor=7,
        fan_out_at=earlier,
    )  # fmt: skip
    PromoFactory(status="active", activated_at=earlier, starts_at=earlier, fan_out_cursor=7, fan_out_at=now)
    PromoFactory(status="active", activated_at=now, starts_at=now - timedelta(seconds=1))  # its task is on its way
    PromoFactory(status="active", activated_at=earlier, starts_at=earlier, notifications_queued=True)

    stalled = selectors.promos_awaiting_fan_out(idle_since=now - timedelta(minutes=2), limit=10)

    assert stalled == [stopped.pk, never.pk]


@pytest.mark.django_db(transaction=True)
def test_a_fan_out_finding_the_promo_being_written_returns_at_once_and_writes_nothing():
    """While one fan-out's batch is uncommitted, a duplicate skips the promo (``busy``) instead of waiting:
    a recovery duplicate must not hold a worker. lock_timeout turns any wait into an error."""
    promo = _live_promo(3)
    holding, release, first = threading.Event(), threading.Event(), []

    def batch_and_hold() -> None:
        with transaction.atomic():
            first.append(fanout.promo_fan_out_batch(promo_id=promo.pk, now=timezone.now()).queued)
            holding.set()
            release.wait(30)
        connection.close()

    thread = threading.Thread(target=batch_and_hold)
    thread.start()
    try:
        assert holding.wait(30)
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '2s'")
        second = fanout.promo_fan_out_batch(promo_id=promo.pk, now=timezone.now())
    finally:
        release.set()
        thread.join(30)
    assert (first, second.skipped) == ([3], "busy")
    assert Notification.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_concurrent_fan_outs_of_one_promo_queue_each_subscriber_once():
    """Three fan-outs of one promo at once (the sweep's recovery publishes duplicates): they take its batches in
    turn, none deadlocks, and every subscriber has one row."""
    promo = _live_promo(300)
    start, errors = threading.Barrier(3), []

    def fan_out() -> None:
        try:
            start.wait(30)
            fanout.promos_fan_out(promo_ids=[promo.pk], now=timezone.now(), on_batch=id, batch_size=7)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=fan_out) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == [] and not any(t.is_alive() for t in threads)
    promo.refresh_from_db()
    assert promo.notifications_queued and _queued_once(promo)


@pytest.mark.django_db(transaction=True)
def test_deliveries_begin_while_the_fan_out_is_still_queueing(start_worker):
    """One worker process, batches of 2, one batch per fan-out run: each batch's delivery task is published
    before the run that continues the walk, so the first subscribers are sent before the last are queued.
    Every subscriber is sent once."""
    # A queue of its own, where the worker's tasks publish too: the session's worker must not take any of them.
    # One process takes it in order: each delivery runs before the continuation published after it.
    queue = f"fanout-{uuid.uuid4().hex[:8]}"
    env = {
        "NOTIFICATION_FAN_OUT_BATCH_SIZE": "2",
        "NOTIFICATION_FAN_OUT_TASK_SECONDS": "0",
        **one_queue(queue),
    }
    start_worker("--concurrency=1", "-Q", queue, env=env)
    promo = _live_promo(10)

    queue_promo_notifications.apply_async(([promo.pk],), queue=queue)

    def done() -> bool:
        sent = Notification.objects.filter(promo=promo, status="sent").count()
        return sent == 10 and FlashPromo.objects.filter(pk=promo.pk, notifications_queued=True).exists()

    wait_for(done, what="all ten sent and the walk finished")  # the last run finds no subscriber left
    promo.refresh_from_db()
    first_sent = min(Notification.objects.filter(promo=promo).values_list("sent_at", flat=True))
    assert promo.fan_out_at is not None
    assert first_sent < promo.fan_out_at  # the last batch was queued after the first delivery
    assert _queued_once(promo) and set(Notification.objects.values_list("attempts", flat=True)) == {1}


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("celery_worker")
def test_the_sweep_resumes_a_fan_out_that_stopped_midway():
    """A fan-out whose worker died after 2 batches of 3 (cursor committed, their deliveries never published, no
    progress for 3 minutes): the next sweep publishes it again, the walk resumes at the cursor and delivers the
    last 2; the 6 rows of the dead run are the queue sweep's (every 30 s, run here once). Each of the 8
    subscribers is sent once."""
    from promotions.tasks import check_active_promos, process_notification_queue

    promo = _live_promo(8)
    for _ in range(2):
        fanout.promo_fan_out_batch(promo_id=promo.pk, now=timezone.now(), batch_size=3)
    earlier = timezone.now() - timedelta(minutes=3)
    FlashPromo.objects.filter(pk=promo.pk).update(activated_at=earlier, fan_out_at=earlier)
    dead_run = set(Notification.objects.filter(promo=promo).values_list("pk", flat=True))

    assert check_active_promos.delay().get(timeout=60)["fan_outs_published"] == 1

    resumed = Notification.objects.filter(promo=promo).exclude(pk__in=dead_run)
    wait_for(lambda: resumed.filter(status="sent").count() == 2, what="the resumed walk's two sent")
    assert Notification.objects.filter(pk__in=dead_run, status="pending").count() == 6
    assert process_notification_queue.delay().get(timeout=60)["due"] == 6
    wait_for(lambda: Notification.objects.filter(promo=promo, status="sent").count() == 8, what="all eight sent")
    promo.refresh_from_db()
    assert promo.notifications_queued and _queued_once(promo)
