"""A worker per queue group, as deployed (README "Queues and workers"): while every process of the bulk
delivery worker waits on a provider that does not answer, the promos worker still makes a due promo live and the
ops worker still records a deferred dead letter.

The three workers consume queues renamed for this module, so the session's other workers take none of their
messages; the provider is the local SMTP server, holding each reply until the test releases it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.utils import timezone

from marketplace.celery import app as celery_app
from observability.deadletters.models import DeadLetter
from observability.failure import Failure
from promotions.models import FlashPromo, Notification, PromoStatus
from promotions.tasks import check_active_promos, deliver_notification_batch
from tests.broker_queues import QueueReader
from tests.conftest import RESULT_TIMEOUT, WorkerProcess, queue_env, renamed_queues, wait_for
from tests.factories import ProductFactory, PromoFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db(transaction=True)

#: Processes of the deliveries worker: each holds one batch (of one notification) at the held provider.
DELIVERY_PROCESSES = 2


@dataclass
class Deployment:
    queues: dict[str, str]
    promos: WorkerProcess
    deliveries: WorkerProcess
    ops: WorkerProcess


@pytest.fixture(scope="module")
def deployment(start_module_worker, broker: QueueReader) -> Iterator[Deployment]:
    """The promos, deliveries and ops workers of the Procfile, on queues of this module's own."""
    queues = renamed_queues()
    env = {
        **queue_env(queues),
        # One notification per batch, so each process holds one; the SMTP client waits for a held reply
        # longer than any test here runs (a busy machine included).
        "NOTIFICATION_BATCH_SIZE": "1",
        "EMAIL_TIMEOUT_SECONDS": "240",
    }
    yield Deployment(
        queues,
        promos=start_module_worker("-Q", queues["promos"], env=env),
        deliveries=start_module_worker("-Q", queues["deliveries"], f"--concurrency={DELIVERY_PROCESSES}", env=env),
        ops=start_module_worker(
            "-Q", ",".join(queues[role] for role in ("maintenance", "deadletters", "default")), "--concurrency=3",
            env=env,
        ),
    )  # fmt: skip
    broker.delete(*queues.values())


@pytest.fixture
def busy_deliveries(transactional_db, deployment, smtp_sink):
    """Every deliveries process waits on the provider, and more batches wait in the queue; yields the number of
    batches published. At the end the provider answers and every notification is sent."""
    smtp_sink.clear()
    product = ProductFactory()
    SubscriptionFactory.create_batch(DELIVERY_PROCESSES * 2, product=product)
    promo = PromoFactory(product=product, status=PromoStatus.ACTIVE, starts_at=timezone.now() - timedelta(minutes=1))
    Notification.objects.bulk_create(
        Notification(promo=promo, subscription=subscription, next_attempt_at=timezone.now())
        for subscription in product.subscriptions.all()
    )
    smtp_sink.hold()
    batches = DELIVERY_PROCESSES * 2
    try:
        for _ in range(batches):
            deliver_notification_batch.apply_async(queue=deployment.queues["deliveries"])
        wait_for(lambda: smtp_sink.held_count() == DELIVERY_PROCESSES, what="every delivery process held")
        yield batches
    finally:
        smtp_sink.release()
    wait_for(lambda: Notification.objects.filter(status="sent").count() == batches, what="the held batches sent")


def test_a_due_countdown_makes_its_promo_live_while_every_bulk_worker_is_busy(
    deployment, busy_deliveries, smtp_sink, broker
):
    """Given both processes of the deliveries worker waiting on the provider and more batches queued behind
    them, when a promo of another product starts 2 s from now, then the promos worker makes it live (its
    countdown, or the sweep itself on a slow machine) while the bulk worker is still held."""
    promo = PromoFactory(starts_at=timezone.now() + timedelta(seconds=2))

    sweep = check_active_promos.apply_async(queue=deployment.queues["promos"]).get(timeout=RESULT_TIMEOUT)

    assert sweep["countdowns_scheduled"] + sweep["activated"] == 1, sweep
    wait_for(lambda: FlashPromo.objects.get(pk=promo.pk).status == PromoStatus.ACTIVE, what="the promo live")
    assert smtp_sink.held_count() == DELIVERY_PROCESSES  # the bulk worker is still busy...
    assert broker.depth(deployment.queues["deliveries"]) > 0  # ...with a backlog behind it
    assert Notification.objects.filter(status="sent").count() == 0
    assert FlashPromo.objects.get(pk=promo.pk).activated_at >= promo.starts_at


def test_a_deferred_dead_letter_is_recorded_while_every_bulk_worker_is_busy(deployment, busy_deliveries, smtp_sink):
    """Given the deliveries worker held as above, when a dead letter deferred while Postgres was down is
    published (to the dead-letter queue, as the deferral routes it), then the ops worker records it."""
    failed = Failure(
        reason="non_retryable_error", task_name="promotions.tasks.deliver_notification_batch",
        task_id=str(uuid.uuid4()), queue=deployment.queues["deliveries"],
    )  # fmt: skip

    celery_app.send_task(
        "observability.record_dead_letter", args=[failed.to_json()], queue=deployment.queues["deadletters"]
    )

    entry = wait_for(lambda: DeadLetter.objects.filter(task_id=failed.task_id).first(), what="the dead letter")
    assert entry.queue == deployment.queues["deliveries"]
    assert smtp_sink.held_count() == DELIVERY_PROCESSES
    assert "observability.record_dead_letter" in deployment.ops.log()
