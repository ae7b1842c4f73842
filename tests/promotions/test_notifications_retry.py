"""Failed notifications are an operator's to see and resend: with the SMTP server down a batch says so at
WARNING (never "delivered" for nothing delivered), each row's error names the server, and once it is back
``manage.py notifications retry`` or the admin action puts the failed rows back as due - attempts from 0,
same idempotency keys - and they are sent once. Real workers, the real SMTP sink, Postgres and Redis."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from promotions.models import FlashPromo, Notification
from promotions.tasks import deliver_notification_batch
from tests.conftest import RESULT_TIMEOUT, ROOT, wait_for
from tests.factories import ProductFactory, PromoFactory, SubscriptionFactory
from tests.net import free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("celery_worker")]

QUEUE = "smtp-down"
DOWN_PORT = free_port()


@pytest.fixture(autouse=True)
def _empty_sink(smtp_sink):
    smtp_sink.clear()


@pytest.fixture(scope="module")
def smtp_down_worker(start_module_worker):
    """A worker whose SMTP server refuses connections (a closed port); two attempts a notification."""
    return start_module_worker(
        "-Q", QUEUE, env={"EMAIL_PORT": str(DOWN_PORT), "NOTIFICATION_MAX_ATTEMPTS": "2", "LOG_FORMAT": "json"}
    )


def _promo_with_pending(count: int, **fields: object) -> FlashPromo:
    product = ProductFactory()
    promo: FlashPromo = PromoFactory.create(
        product=product, status="active", starts_at=timezone.now() - timedelta(minutes=1), **fields
    )
    for subscription in SubscriptionFactory.create_batch(count, product=product):
        Notification.objects.create(promo=promo, subscription=subscription, next_attempt_at=timezone.now())
    return promo


def _fail_all(promo: FlashPromo) -> None:
    """Deliver batches on the SMTP-less worker until every notification of ``promo`` has failed."""

    def all_failed() -> bool:
        if Notification.objects.filter(promo=promo).exclude(status="failed").exists():
            deliver_notification_batch.apply_async(queue=QUEUE, ignore_result=False).get(timeout=RESULT_TIMEOUT)
            return False
        return True

    wait_for(all_failed, timeout=RESULT_TIMEOUT, interval=0.3, what="every notification to fail")


def test_smtp_down_fails_loudly_and_a_retry_sends_each_once(smtp_down_worker, smtp_sink):
    """Three notifications fail with the SMTP server down: their error names it, the batch lines are WARNING
    with ``sent=0`` (no INFO line claims a delivery), per-row lines stay at DEBUG and no line logs a None.
    ``notifications retry --status failed --promo ID`` puts all three back (attempts 0, keys kept) and the
    working worker sends each exactly once."""
    promo = _promo_with_pending(3)
    keys = set(Notification.objects.filter(promo=promo).values_list("idempotency_key", flat=True))

    _fail_all(promo)

    errors = set(Notification.objects.filter(promo=promo).values_list("last_error", flat=True))
    assert len(errors) == 1 and errors.pop().startswith(f"SMTP 127.0.0.1:{DOWN_PORT}: ConnectionRefusedError")
    lines = [json.loads(line) for line in smtp_down_worker.log().splitlines() if line.startswith("{")]
    batches = [line for line in lines if line["event"].startswith("notifications.batch")]
    assert batches and {(b["event"], b["level"], b["sent"]) for b in batches} == {
        ("notifications.batch_not_all_sent", "warning", 0)
    }
    assert not [line for line in lines if line["event"] in {"notification.failed", "notifications.delivered"}]
    finished = [line for line in lines if line["event"] == "task.finished"]
    assert finished and all(None not in line.values() for line in finished)

    out = io.StringIO()
    call_command("notifications", "retry", "--status", "failed", "--promo", str(promo.pk), stdout=out)

    assert out.getvalue() == "3 failed notification(s) due again; the next queue sweep sends them.\n"
    rows = Notification.objects.filter(promo=promo)
    assert {(n.status, n.attempts, n.failed_at) for n in rows} == {("pending", 0, None)}
    assert {n.idempotency_key for n in rows} == keys
    assert deliver_notification_batch.apply_async(ignore_result=False).get(timeout=RESULT_TIMEOUT)["sent"] == 3
    assert smtp_sink.deliveries_by_key() == {str(key): 1 for key in keys}


def test_retry_filters_by_promo_and_time_and_a_dry_run_changes_nothing(smtp_down_worker):
    """``--dry-run`` counts and changes nothing; ``--promo`` and ``--since`` narrow the rows; failed rows of a
    promo that is over stay failed (nobody is told about a dead deal)."""
    first, second = _promo_with_pending(2), _promo_with_pending(1)
    over = _promo_with_pending(1)
    _fail_all(first)
    _fail_all(second)
    _fail_all(over)
    over.status = "ended"
    over.save()
    Notification.objects.filter(promo=second).update(failed_at=timezone.now() - timedelta(hours=3))

    def retry(*args: str) -> str:
        out = io.StringIO()
        call_command("notifications", "retry", "--status", "failed", *args, stdout=out)
        return out.getvalue()

    assert retry("--dry-run") == "Dry run: 3 failed notification(s) would be resent; nothing changed.\n"
    assert not Notification.objects.exclude(status="failed").exists()
    assert retry("--since", "2h").startswith("2 failed notification(s) due again")
    assert set(Notification.objects.filter(status="pending").values_list("promo_id", flat=True)) == {first.pk}
    assert retry("--promo", str(second.pk)).startswith("1 failed")
    assert list(Notification.objects.filter(status="failed").values_list("promo_id", flat=True)) == [over.pk]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--status", "sent"], "argument --status: invalid choice: 'sent'"),
        (["--status", "failed", "--since", "2x"], "is neither an ISO 8601 time"),
        (["--status", "failed", "--promo", "abc"], "'abc' is not a promo id"),
        ([], "the following arguments are required: --status"),
    ],
)
def test_bad_arguments_are_one_clear_line_and_exit_2(args, expected):
    """A wrong argument stops the command before any change: exit status 2, the reason on stderr."""
    result = subprocess.run(
        [sys.executable, "manage.py", "notifications", "retry", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert expected in result.stderr.splitlines()[-1]


def test_the_admin_resends_the_selected_failed_notifications(admin_client, smtp_down_worker):
    """The Notification admin's "Resend selected failed notifications" puts the selected failed rows back as
    due and says how many; the rows not selected stay failed."""
    promo = _promo_with_pending(3)
    _fail_all(promo)
    chosen = list(Notification.objects.filter(promo=promo).values_list("pk", flat=True))[:2]

    response = admin_client.post(
        reverse("admin:promotions_notification_changelist"),
        {"action": "resend_failed", "_selected_action": chosen},
        follow=True,
    )

    assert "2 failed notification(s) due again" in response.content.decode()
    assert set(Notification.objects.filter(status="pending").values_list("pk", flat=True)) == set(chosen)
    assert Notification.objects.filter(status="failed").count() == 1
