"""OpenTelemetry from real prefork workers to a local OTLP receiver: the metrics of a known workload with
their labels, spans joined into traces across retries, dead letters and replays, nothing lost when
children are recycled, and log lines that carry their span's trace id."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from observability.deadletters.models import DeadLetter
from promotions.models import Notification, Subscription
from tests import tasks
from tests.conftest import RESULT_TIMEOUT, ROOT, TEST_BROKER, one_queue, start_process, stop_process, wait_for
from tests.net import free_port, http_status, promo_create_request
from tests.otlp_receiver import OtlpReceiver, Span

pytestmark = [pytest.mark.django_db(transaction=True)]

#: Labels a task metric may carry: bounded sets only, never task ids or host names.
ALLOWED_LABELS = {"task", "queue", "outcome", "error_type", "reason", "status", "priority", "entry", "channel", "state"}
SERVER, PRODUCER, CONSUMER = 2, 4, 5  # opentelemetry.proto.trace.v1.Span.SpanKind values


def runs_of(otlp: OtlpReceiver, task: str) -> list[Span]:
    """The CONSUMER spans (``run <queue>``) of ``task``'s runs."""
    return [s for s in list(otlp.spans) if s.kind == CONSUMER and s.attributes.get("celery.task_name") == task]


def traceparent() -> tuple[str, str]:
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return trace_id, f"00-{trace_id}-{span_id}-01"


@pytest.fixture(scope="module")
def observed_worker(start_module_worker, otlp):
    """A prefork worker exporting to the receiver, with JSON logs; metrics every 300 ms."""
    return start_module_worker(
        "-Q", "observed",
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_METRIC_EXPORT_INTERVAL": "300",
             "OTEL_BSP_SCHEDULE_DELAY": "100", "LOG_FORMAT": "json"},
    )  # fmt: skip


def test_a_known_workload_gives_the_expected_metrics_with_bounded_labels(observed_worker, otlp):
    """3 successes, 1 retry then success, 1 dead letter: each appears with the right labels and values."""
    token = uuid.uuid4().hex
    for _ in range(3):
        tasks.echo.apply_async((token,), queue="observed").get(timeout=RESULT_TIMEOUT)
    tasks.flaky.apply_async((uuid.uuid4().hex, 1), queue="observed").get(timeout=RESULT_TIMEOUT)
    failed = tasks.permanent.apply_async((token,), queue="observed")
    wait_for(lambda: DeadLetter.objects.filter(task_id=failed.id).exists(), what="the dead letter")

    def finished(task: str, outcome: str):
        return otlp.total("celery.tasks.finished", task=task, outcome=outcome, queue="observed")

    expected = {
        ("tests.echo", "succeeded"): 3,
        ("tests.flaky", "retried"): 1,
        ("tests.flaky", "succeeded"): 1,
        ("tests.permanent", "dead_lettered"): 1,
    }
    # Each child exports on its own schedule: wait until both have reported the whole workload.
    wait_for(lambda: all(finished(*key) == n for key, n in expected.items()), timeout=20, what="the metrics export")
    assert otlp.total("celery.tasks.started", task="tests.echo") == 3
    assert otlp.total("celery.tasks.finished", task="tests.permanent", error_type="PermanentError") == 1
    assert otlp.total("celery.task.duration", task="tests.permanent", outcome="dead_lettered") == 1
    assert otlp.total("celery.task.duration", task="tests.echo", outcome="succeeded") == 3
    assert otlp.total("celery.task.queue_wait", task="tests.echo") == 3
    assert otlp.total("celery.tasks.published", task="tests.flaky") == 1  # the retry, published by the child
    assert otlp.total("celery.task.publish_duration", task="tests.flaky", outcome="sent") == 1
    wait_for(lambda: otlp.total("dead_letters.created", task="tests.permanent", reason="non_retryable_error") == 1,
             what="the main process's dead-letter counter")  # fmt: skip
    wait_for(lambda: otlp.total("dead_letters.pending", task="tests.permanent") >= 1, what="the pending gauge")
    priorities = {
        p.attributes["priority"] for p in otlp.latest("celery.queue.backlog") if p.attributes["queue"] == "celery"
    }
    # Redis keeps a list per priority level (kombu's four); a RabbitMQ queue is one.
    assert priorities == ({"0"} if TEST_BROKER == "rabbitmq" else {"0", "3", "6", "9"})
    for point in otlp.points:
        assert set(point.attributes) <= ALLOWED_LABELS, point


def test_spans_follow_the_messaging_conventions_and_join_retries_and_dead_letters(observed_worker, otlp):
    """The producer's trace continues in the task run; a retry is published inside the failed run (its
    producer span the failed run's child, the next run that span's child); the dead letter stores the same trace
    id; histogram samples carry it as an exemplar."""
    trace_id, parent = traceparent()
    tasks.flaky.apply_async((uuid.uuid4().hex, 1), queue="observed", headers={"traceparent": parent}).get(
        timeout=RESULT_TIMEOUT
    )
    failed = tasks.permanent.apply_async((uuid.uuid4().hex,), queue="observed", headers={"traceparent": parent})

    def flaky_runs() -> list | None:
        runs = [s for s in runs_of(otlp, "tests.flaky") if s.trace_id == trace_id]
        return runs if len(runs) == 2 else None

    runs = wait_for(flaky_runs, what="both runs of the flaky task in the producer's trace")
    first, second = sorted(runs, key=lambda s: s.attributes["celery.retries"])
    assert first.parent_span_id == parent.split("-")[2]
    retry = wait_for(lambda: [s for s in otlp.spans if s.span_id == second.parent_span_id], what="the retry's publish")
    assert retry[0].kind == PRODUCER and retry[0].parent_span_id == first.span_id
    assert first.kind == CONSUMER and first.name == "run observed"
    assert first.attributes["messaging.destination.name"] == "observed"
    assert first.attributes["messaging.operation.type"] == "process"
    assert first.attributes["celery.outcome"] == "retried"
    assert second.attributes["celery.outcome"] == "succeeded"
    entry = wait_for(lambda: DeadLetter.objects.filter(task_id=failed.id).first(), what="the dead letter")
    assert entry.trace_id == trace_id
    dead = wait_for(lambda: [s for s in runs_of(otlp, "tests.permanent") if s.trace_id == trace_id],
                    what="the failed run's span")  # fmt: skip
    assert dead[0].attributes["error.type"] == "observability.errors.PermanentError"  # canonical, as semconv says
    wait_for(
        lambda: any(trace_id in p.exemplar_trace_ids for p in otlp.latest("celery.task.duration")),
        what="an exemplar with the trace id",
    )


def test_a_replayed_dead_letter_links_to_the_original_trace(observed_worker, otlp):
    """The replayed run starts a new trace whose span links to the failed one."""
    trace_id, parent = traceparent()
    failed = tasks.flaky.apply_async((uuid.uuid4().hex, 10), queue="observed", headers={"traceparent": parent})
    entry = wait_for(lambda: DeadLetter.objects.filter(task_id=failed.id).first(), timeout=30, what="the dead letter")
    call_command("dlq", "replay", str(entry.pk))
    replay = wait_for(
        lambda: [s for s in runs_of(otlp, "tests.flaky") if any(t == trace_id for t, _ in s.links)],
        what="the replayed run's span",
    )
    assert replay[0].trace_id != trace_id


def test_recycled_children_lose_no_spans(start_worker, otlp):
    """With max_tasks_per_child=1 every child exits after one task; each flushes its spans on the way out."""
    worker = start_worker(
        "-Q", "recycled", "--max-tasks-per-child=1",
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "60000"},
    )  # fmt: skip
    token = uuid.uuid4().hex
    for _ in range(6):
        tasks.echo.apply_async((token,), queue="recycled").get(timeout=RESULT_TIMEOUT)

    def recycled_spans() -> list | None:
        spans = [s for s in runs_of(otlp, "tests.echo") if s.attributes["messaging.destination.name"] == "recycled"]
        return spans if len(spans) == 6 else None

    # The batch processor would wait 60 s: only the flush at child exit can deliver these in time.
    spans = wait_for(recycled_spans, timeout=30, what="the spans of six recycled children")
    # Six children, in the pool's two slots: each exports as its slot (observability.telemetry.pool_slots).
    assert len({s.attributes["messaging.message.id"] for s in spans}) == 6
    assert {s.resource["service.instance.id"] for s in spans} <= {f"{worker.name}-slot0", f"{worker.name}-slot1"}


def test_an_unreachable_collector_does_not_hold_up_recycled_children(start_worker):
    """Every child exits after one task and its last export cannot succeed: it gives up after
    TELEMETRY_SHUTDOWN_TIMEOUT, says so, and the pool replaces it. Unbounded, the exporters' retries held each
    exiting child ~20 s - the third task below would wait that long for a child - and a stopping worker ~12 s."""
    worker = start_worker(
        "-Q", "unreachable-collector", "--max-tasks-per-child=1",
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}", "TELEMETRY_SHUTDOWN_TIMEOUT": "0.5"},
    )  # fmt: skip
    token = uuid.uuid4().hex
    for _ in range(4):
        assert tasks.echo.apply_async((token,), queue="unreachable-collector").get(timeout=10) == token

    wait_for(
        lambda: worker.log().count('"event":"telemetry.shutdown_timed_out"') >= 3,
        what="three exiting children to report the export they gave up",
    )
    stopping = time.monotonic()
    worker.stop()
    # Its children give up after 0.5 s each, and so does the main process's last metrics export: unbounded,
    # that export alone retried for ~10 s before the worker could exit.
    assert worker.process.returncode == 0
    assert time.monotonic() - stopping < 8


def test_log_lines_inside_a_task_carry_its_trace(observed_worker, otlp):
    """Every JSON line of a run carries task name, id, retries and the span's ids; one summary line ends it."""
    trace_id, parent = traceparent()
    result = tasks.echo.apply_async(("log-me",), queue="observed", headers={"traceparent": parent})
    result.get(timeout=RESULT_TIMEOUT)

    def summary():
        for line in observed_worker.log().splitlines():
            if line.startswith("{") and '"task.finished"' in line and result.id in line:
                return json.loads(line)
        return None

    line = wait_for(summary, what="the summary line")
    assert line["task_name"] == "tests.echo" and line["task_id"] == result.id and line["retries"] == 0
    assert line["trace_id"] == trace_id and len(line["span_id"]) == 16
    assert line["outcome"] == "succeeded" and line["duration_ms"] >= 0 and line["queue_wait_ms"] >= 0


def test_a_periodic_run_updates_its_beat_entrys_last_success(observed_worker, otlp):
    """A run published for a beat entry sets that entry's last-success gauge (alerts: missed 3 intervals)."""
    tasks.echo.apply_async(("tick",), queue="observed", headers={"x-schedule-entry": "test-entry"}).get(
        timeout=RESULT_TIMEOUT
    )
    point = wait_for(
        lambda: [p for p in otlp.latest("celery.beat.last_success") if p.attributes.get("entry") == "test-entry"],
        what="the beat gauge",
    )[0]
    assert point.value > 1_700_000_000


def test_the_worker_reports_a_heartbeat_per_consumed_queue_and_each_beat_interval(observed_worker, otlp):
    """Workers-up and missed-run alerts rest on these: a fresh timestamp for each queue the worker consumes
    (only ``observed`` for ``-Q observed``) and the seconds between runs of each interval beat entry."""
    started = time.time()
    beats = wait_for(
        lambda: [p for p in otlp.latest("celery.worker.heartbeat") if p.value >= started], what="a fresh heartbeat"
    )
    assert {p.attributes["queue"] for p in beats} == {"observed"}
    intervals = wait_for(lambda: otlp.latest("celery.beat.interval"), what="the beat intervals")
    assert {p.attributes["entry"]: p.value for p in intervals} == {
        key: float(spec["schedule"]) for key, spec in settings.CELERY_BEAT_SCHEDULE.items()
    }


def test_one_trace_joins_an_http_request_and_the_task_it_enqueues(otlp, start_worker, worker_env, tmp_path):
    """``POST /api/promos`` on a real server enqueues a sweep: the request's trace holds the publish's PRODUCER
    span (``send traced``, made by the web process) and, as its child, the worker's run."""
    from django.contrib.auth.models import User
    from knox.models import AuthToken

    from tests.factories import ProductFactory

    # Web and worker on a queue of their own: the session's other (untraced) workers must not take the task.
    traced = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100", **one_queue("traced")}
    start_worker("-Q", "traced", env=traced)
    token = AuthToken.objects.create(user=User.objects.create_superuser("ops"))[1]  # every API permission
    product = ProductFactory()
    port = free_port()
    env = {**worker_env, **traced}
    with (tmp_path / "web.log").open("w") as log:
        web = start_process(
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            request = promo_create_request(port, token, product.pk, "Traced")
            wait_for(lambda: http_status(request) == 201, timeout=30, what="the web server to create the promo")
            server = wait_for(lambda: [s for s in otlp.spans if s.kind == SERVER and "promos" in s.name],
                              what="the request span")  # fmt: skip
            run = wait_for(
                lambda: [s for s in runs_of(otlp, "promotions.tasks.check_active_promos")
                         if s.trace_id == server[0].trace_id],
                what="the task run in the request's trace",
            )  # fmt: skip
            assert run[0].resource["service.name"] == "marketplace-worker"
            assert server[0].resource["service.name"] == "marketplace-web"
            [send] = wait_for(lambda: [s for s in otlp.spans if s.span_id == run[0].parent_span_id],
                              what="the publish's span")  # fmt: skip
            assert send.kind == PRODUCER and send.name == "send traced" and send.trace_id == server[0].trace_id
            assert send.resource["service.name"] == "marketplace-web"
            assert send.attributes["messaging.message.id"] == run[0].attributes["messaging.message.id"]
        finally:
            stop_process(web)


def test_domain_metrics_and_rejections_are_recorded(observed_worker, otlp):
    """A due promo's activation records its lag and count; a delivery batch counts what it sent and the delivery
    lag of each; a message for an unknown task counts as rejected by the worker's main process."""
    from marketplace.celery import app
    from promotions.tasks import check_active_promos, deliver_notification_batch
    from tests.factories import ProductFactory, PromoFactory, SubscriptionFactory

    # No subscribers here: activation publishes no delivery batch another worker could take.
    PromoFactory(starts_at=timezone.now() - timedelta(seconds=2))
    check_active_promos.apply_async(queue="observed").get(timeout=RESULT_TIMEOUT)
    product = ProductFactory()
    now = timezone.now()
    live = PromoFactory(product=product, status="active", starts_at=now - timedelta(seconds=90),
                        activated_at=now - timedelta(seconds=90))  # fmt: skip
    # Three subscribers from before the promo went live (late by 90 s and more), one who confirmed just now
    # (late only from then).
    early = SubscriptionFactory.create_batch(3, product=product)
    Subscription.objects.filter(pk__in=[s.pk for s in early]).update(
        created_at=now - timedelta(days=1), confirmed_at=now - timedelta(days=1)
    )
    for subscription in [*early, SubscriptionFactory(product=product)]:
        Notification.objects.create(promo=live, subscription=subscription, next_attempt_at=timezone.now())
    assert (
        deliver_notification_batch.apply_async(queue="observed", ignore_result=False).get(timeout=RESULT_TIMEOUT)[
            "sent"
        ]
        == 4
    )
    elapsed = (timezone.now() - now).total_seconds()
    app.send_task("no.such.task", queue="observed")

    wait_for(lambda: otlp.total("promotions.activation_lag") >= 1, what="the activation lag histogram")
    assert otlp.total("promotions.activated") >= 1
    wait_for(lambda: otlp.total("notifications.sent", channel="email") >= 4, what="the sent counter")
    # The delivery lag of each notification sent, from its promo's activation or its subscriber's confirmation.
    (lag,) = wait_for(
        lambda: [p for p in otlp.latest("notifications.delivery_lag") if p.count == 4], what="the delivery lag"
    )
    assert lag.attributes == {"channel": "email"}
    assert 3 * 90 <= lag.total <= 3 * (90 + elapsed) + elapsed
    wait_for(lambda: otlp.total("celery.tasks.finished", task="no.such.task", outcome="rejected") == 1,
             what="the rejected outcome")  # fmt: skip
    backlog = wait_for(lambda: otlp.latest("notifications.backlog"), what="the notification backlog gauge")
    assert {p.attributes["status"] for p in backlog} == {"pending", "sending"}
